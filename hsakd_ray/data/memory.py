"""In-memory datasets (digits, synthetic; CIFAR at 32 px comes from disk.py): item access without PIL, whole-set access
for GPU-resident training."""
from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..config import DataConfig
from .source import Source
from .splits import stratified_split
from .transforms import RandomCropFlip, Transformed, crop_padding, normalisation, resolve_flip

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # the digits train/test split is part of the dataset, independent of data.split_seed
SYNTHETIC_NOISE = 0.3


class TensorImageDataset(Dataset):
    """Normalised images (N, C, H, W) and integer labels (N,) held in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    @property
    def targets(self) -> torch.Tensor:
        return self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def _views(ds: Dataset) -> tuple[Dataset, list[Subset], Transformed | None]:
    """``ds`` unwrapped: its base dataset, the Subsets on the way (outermost first) and the Transformed view."""
    subsets: list[Subset] = []
    view = None
    while isinstance(ds, (Subset, Transformed)):
        if isinstance(ds, Subset):
            subsets.append(ds)
            ds = ds.dataset
        else:
            view, ds = ds, ds.base
    return ds, subsets, view


def is_in_memory(ds: Dataset) -> bool:
    """Whether ``ds`` (or the dataset under its Subset / Transformed views) holds its images as one tensor; looks at
    the wrappers only, copying nothing."""
    return isinstance(_views(ds)[0], TensorImageDataset)


def _not_in_memory(what: str, ds: Dataset) -> TypeError:
    return TypeError(f"{what} needs an in-memory dataset (digits, synthetic, CIFAR at 32 px), got {type(ds).__name__}")


def as_tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All items of an in-memory dataset (or a Subset / transformed view of one) as (images, labels), un-augmented."""
    base, subsets, _ = _views(ds)
    if not isinstance(base, TensorImageDataset):
        raise _not_in_memory("as_tensors", base)
    index: torch.Tensor | None = None
    for subset in subsets:  # outermost first: map the positions inwards, then gather once
        indices = torch.as_tensor(subset.indices, dtype=torch.long)
        index = indices if index is None else indices[index]
    if index is None:
        return base.images, base.labels
    return base.images[index], base.labels[index]


def tensor_augmentation(ds: Dataset) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The augmentation that item access of an in-memory ``ds`` applies (None: none), to apply to whole batches."""
    base, _, view = _views(ds)
    if not isinstance(base, TensorImageDataset):
        raise _not_in_memory("tensor_augmentation", base)
    return view.transform if view is not None else None


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``load_digits`` gives them: images (N, 8, 8) of 0..16, labels (N,). Read straight
    from the file scikit-learn ships (``datasets/data/digits.csv.gz``: 64 pixels then the label per row), found
    without importing scikit-learn, whose import is 0.6 s of every Train worker's start-up; through
    ``load_digits`` where that file is not found."""
    spec = importlib.util.find_spec("sklearn")  # a top-level package: located, not imported
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt", encoding="utf-8") as rows:
                table = np.loadtxt(rows, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
    from sklearn.datasets import load_digits  # only this dataset needs scikit-learn

    bunch = load_digits()
    return bunch.images, bunch.target


def digits_source(cfg: DataConfig) -> Source:
    """scikit-learn's 1,797 handwritten 8x8 digits, upsampled to a square RGB image, split 80/20 by class."""
    images_8px, targets = digits_arrays()
    size = cfg.image_size or 32
    pixels = torch.from_numpy(images_8px).float().div(16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    images = pixels.expand(-1, 3, -1, -1)
    labels = torch.from_numpy(targets).long()
    train_idx, test_idx = stratified_split(labels.tolist(), DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    train, test = torch.tensor(train_idx), torch.tensor(test_idx)
    # flip off by default: digits are not mirror-invariant
    return _in_memory_source(cfg, images[train], labels[train], images[test], labels[test], 10, flip_default=False)


def synthetic_source(cfg: DataConfig) -> Source:
    """Deterministic learnable images: a smooth random pattern per class plus per-image Gaussian noise."""
    size, classes = cfg.image_size or 32, cfg.synthetic_classes
    coarse = torch.rand(classes, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    patterns = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def draw(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        labels = torch.randperm(n, generator=gen) % classes  # balanced classes in random order
        noise = SYNTHETIC_NOISE * torch.randn(n, 3, size, size, generator=gen)
        return (patterns[labels] + noise).clamp(0.0, 1.0), labels

    train_images, train_labels = draw(cfg.synthetic_train_size, seed=1)
    test_images, test_labels = draw(cfg.synthetic_test_size, seed=2)
    return _in_memory_source(cfg, train_images, train_labels, test_images, test_labels, classes, flip_default=False)


def _in_memory_source(
    cfg: DataConfig,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    flip_default: bool,
) -> Source:
    """Normalise [0, 1] images (with ``data.mean``/``data.std``, else the training set's per-channel statistics),
    wrap both splits in memory and pick the tensor augmentation (crop_flip or none)."""
    stats = normalisation(cfg.mean, cfg.std, lambda: (tuple(train_images.mean(dim=(0, 2, 3)).tolist()),
                                                      tuple(train_images.std(dim=(0, 2, 3)).tolist())))
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in stats)

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return ((images - mean) / std).contiguous()

    size = train_images.shape[-1]
    black = tuple((-mean / std).flatten().tolist())
    flip = resolve_flip(cfg.flip, flip_default)
    augmentation = RandomCropFlip(crop_padding(size), flip, fill=black) if cfg.augment != "none" else None
    return Source(
        train=TensorImageDataset(normalise(train_images), train_labels),
        test=TensorImageDataset(normalise(test_images), test_labels),
        num_classes=num_classes,
        image_size=size,
        stats=stats,
        train_transform=augmentation,
        eval_transform=None,
    )
