"""Class-stratified index splits (validation hold-out, few-shot subsets) and label lookup without loading images."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset, Subset

from .transforms import Transformed


def stratified_split(targets: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices into (keep, held), holding out ``fraction`` of every class, fixed by ``seed``.

    Each class with at least two samples keeps at least one and holds at least one, so both parts see every class.
    Both lists are sorted, so the split depends only on (targets, fraction, seed).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"stratified_split fraction must be in (0, 1), got {fraction!r}")
    labels = np.asarray(targets, dtype=np.int64)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    held: list[int] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_held = min(max(math.floor(fraction * len(members) + 0.5), 1), len(members) - 1)
        held.extend(members[:n_held].tolist())
        keep.extend(members[n_held:].tolist())
    return sorted(keep), sorted(held)


def split_indices(targets: Sequence[int], val_fraction: float, few_shot_ratio: float,
                  seed: int) -> tuple[list[int], list[int] | None]:
    """(training indices, validation indices or None): the class-stratified validation hold-out, then the few-shot
    fraction of what remains. The one place that decides how many images a run trains on."""
    train_idx = list(range(len(targets)))
    val_idx = None
    if val_fraction > 0:
        train_idx, val_idx = stratified_split(targets, val_fraction, seed)
    if few_shot_ratio < 1:
        _, chosen = stratified_split([targets[i] for i in train_idx], few_shot_ratio, seed)
        train_idx = [train_idx[j] for j in chosen]
    return train_idx, val_idx


def dataset_targets(ds: Dataset) -> list[int]:
    """Integer labels of every item of ``ds`` in order, read from label arrays instead of images where possible."""
    if isinstance(ds, Subset):
        parent = dataset_targets(ds.dataset)
        return [parent[i] for i in ds.indices]
    if isinstance(ds, Transformed):
        return dataset_targets(ds.base)
    for attr in ("targets", "labels"):  # torchvision datasets, TensorImageDataset, TinyImageNet val / STL10
        labels = getattr(ds, attr, None)
        if labels is not None:
            return np.asarray(labels, dtype=np.int64).tolist()
    return [int(ds[i][1]) for i in range(len(ds))]
