"""Datasets by name: each name maps to the loader that reads or generates it."""
from __future__ import annotations

from collections.abc import Callable

from ..config import DataConfig
from ..errors import DataError
from .disk import cifar_source, imagefolder_source, stl10_source, tinyimagenet_source
from .memory import digits_source, synthetic_source
from .source import Source

_LOADERS: dict[str, Callable[[DataConfig], Source]] = {
    "cifar100": cifar_source,
    "cifar10": cifar_source,
    "imagefolder": imagefolder_source,
    "stl10": stl10_source,
    "tinyimagenet": tinyimagenet_source,
    "digits": digits_source,
    "synthetic": synthetic_source,
}

DATASETS: tuple[str, ...] = tuple(_LOADERS)


def load_source(cfg: DataConfig) -> Source:
    """The raw splits and transforms of dataset ``cfg.name``."""
    if cfg.name not in _LOADERS:
        raise DataError(f"unknown dataset {cfg.name!r}; choose one of: {', '.join(DATASETS)}")
    return _LOADERS[cfg.name](cfg)
