"""What a dataset loader hands to ``build_datasets``: the raw splits and how to turn their items into model inputs."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from .transforms import Stats


@dataclass
class Source:
    """Un-transformed training and test sets of one dataset, with its training and evaluation transforms."""

    train: Dataset
    test: Dataset
    num_classes: int
    image_size: int
    stats: Stats
    train_transform: Callable[[Any], torch.Tensor] | None
    eval_transform: Callable[[Any], torch.Tensor] | None
