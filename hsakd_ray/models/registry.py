"""Architecture registry: ``@register_model`` on each backbone factory (named after the function), ``build_model``
to make one."""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from ..errors import ConfigError
from .base import Backbone, HSAKDNet

Factory = Callable[[int], Backbone]
_REGISTRY: dict[str, Factory] = {}


def register_model(factory: Factory) -> Factory:
    """Register ``factory(num_classes) -> Backbone`` under the factory's own name."""
    name = factory.__name__
    if name in _REGISTRY:
        raise ValueError(f"architecture {name!r} registered twice")
    _REGISTRY[name] = factory
    return factory


def list_architectures() -> list[str]:
    return sorted(_REGISTRY)


def build_backbone(arch: str, num_classes: int) -> Backbone:
    if arch not in _REGISTRY:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of: {', '.join(list_architectures())}")
    return _REGISTRY[arch](num_classes)


def build_model(arch: str, num_classes: int, aux_stages: str | Sequence[int] = "all") -> HSAKDNet:
    """A backbone of ``arch`` with HSAKD auxiliary heads after the stages in ``aux_stages`` ("all" or 1-based)."""
    return HSAKDNet(build_backbone(arch, num_classes), num_classes, aux_stages, arch=arch)


@functools.cache
def num_stages(arch: str) -> int:
    """Stages of ``arch``, from a backbone built on the meta device (shapes only, no weights allocated)."""
    with torch.device("meta"):
        return build_backbone(arch, 10).num_stages
