"""``build_datasets``: one config in, the training set and the evaluation set (test, or held-out validation) out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch.utils.data import Dataset, Subset

from ..config import DataConfig
from .registry import load_source
from .splits import dataset_targets, split_indices
from .transforms import Transformed


@dataclass
class DataBundle:
    """What a run trains and evaluates on; items are (normalised C x H x W float tensor, int label)."""

    train: Dataset                    # training augmentation applied on access
    eval: Dataset                     # no augmentation: the test set, or the validation split when eval_split == "val"
    num_classes: int
    image_size: int
    eval_split: Literal["test", "val"]
    mean: tuple[float, float, float]  # per-channel normalisation applied to every image
    std: tuple[float, float, float]


def eval_split(cfg: DataConfig) -> Literal["test", "val"]:
    """What a job evaluates on: the carved validation split when ``val_fraction > 0``, else the test set."""
    return "val" if cfg.val_fraction > 0 else "test"


def build_datasets(cfg: DataConfig) -> DataBundle:
    """Load ``cfg.name`` and carve the validation split (``val_fraction``) and few-shot subset (``few_shot_ratio``).

    With ``val_fraction > 0`` evaluation uses a class-stratified split of the training set fixed by ``split_seed`` and
    the test set is never touched (docs/method.md, "Tuning protocol"); the few-shot fraction is then taken from
    what remains.
    """
    source = load_source(cfg)
    targets = dataset_targets(source.train)
    split = eval_split(cfg)
    train_idx, val_idx = split_indices(targets, cfg.val_fraction, cfg.few_shot_ratio, cfg.split_seed)
    if val_idx is not None:
        eval_set: Dataset = Subset(Transformed(source.train, source.eval_transform), val_idx)
    else:
        eval_set = Transformed(source.test, source.eval_transform)
    train_set: Dataset = Transformed(source.train, source.train_transform)
    if len(train_idx) < len(targets):
        train_set = Subset(train_set, train_idx)
    mean, std = source.stats
    return DataBundle(train_set, eval_set, source.num_classes, source.image_size, split, mean, std)
