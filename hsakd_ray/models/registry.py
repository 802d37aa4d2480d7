"""Architecture registry: ``@register_model`` next to each backbone factory, ``build_model`` to make one."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from .base import Backbone, HSAKDNet

_REGISTRY: dict[str, Callable[[int], Backbone]] = {}


def register_model(name: str) -> Callable[[Callable[[int], Backbone]], Callable[[int], Backbone]]:
    """Register ``factory(num_classes) -> Backbone`` under ``name``."""

    def wrap(factory: Callable[[int], Backbone]) -> Callable[[int], Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_architectures() -> list[str]:
    return sorted(_REGISTRY)


def build_backbone(arch: str, num_classes: int) -> Backbone:
    if arch not in _REGISTRY:
        raise ValueError(f"unknown architecture {arch!r}; choose one of: {', '.join(list_architectures())}")
    return _REGISTRY[arch](num_classes)


def build_model(arch: str, num_classes: int, aux_stages: str | Sequence[int] = "all") -> HSAKDNet:
    """A backbone of ``arch`` with HSAKD auxiliary heads after the stages in ``aux_stages`` ("all" or 1-based)."""
    return HSAKDNet(build_backbone(arch, num_classes), num_classes, aux_stages, arch=arch)


def num_stages(arch: str) -> int:
    return build_backbone(arch, 10).num_stages
