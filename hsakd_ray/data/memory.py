"""In-memory datasets (digits, synthetic; CIFAR at 32 px comes from disk.py): item access without PIL, whole-set access
for GPU-resident training."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from .source import Source
from .splits import stratified_split
from .transforms import RandomCropFlip, Transformed, crop_padding

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


def as_tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All items of an in-memory dataset (or a Subset / transformed view of one) as (images, labels), un-augmented."""
    if isinstance(ds, Subset):
        images, labels = as_tensors(ds.dataset)
        index = torch.as_tensor(ds.indices, dtype=torch.long)
        return images[index], labels[index]
    if isinstance(ds, Transformed):
        return as_tensors(ds.base)
    if isinstance(ds, TensorImageDataset):
        return ds.images, ds.labels
    raise TypeError(f"as_tensors needs an in-memory dataset (digits, synthetic, CIFAR at 32 px), "
                    f"got {type(ds).__name__}")


def tensor_augmentation(ds: Dataset) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The augmentation that item access of an in-memory ``ds`` applies (None: none), to apply to whole batches."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    transform = ds.transform if isinstance(ds, Transformed) else None
    base = ds.base if isinstance(ds, Transformed) else ds
    if not isinstance(base, TensorImageDataset):
        name = type(base).__name__
        raise TypeError(f"tensor_augmentation needs an in-memory dataset (digits, synthetic, CIFAR at 32 px), "
                        f"got {name}")
    return transform


def digits_source(image_size: int | None, augment: bool) -> Source:
    """scikit-learn's 1,797 handwritten 8x8 digits, upsampled to a square RGB image, split 80/20 by class."""
    from sklearn.datasets import load_digits  # only this dataset needs scikit-learn

    bunch = load_digits()
    size = image_size or 32
    pixels = torch.from_numpy(bunch.images).float().div(16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    images = pixels.expand(-1, 3, -1, -1)
    labels = torch.from_numpy(bunch.target).long()
    train_idx, test_idx = stratified_split(labels.tolist(), DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    train, test = torch.tensor(train_idx), torch.tensor(test_idx)
    # no flip: digits are not mirror-invariant
    return _in_memory_source(images[train], labels[train], images[test], labels[test], 10, augment, flip=False)


def synthetic_source(train_size: int, test_size: int, classes: int, image_size: int | None, augment: bool) -> Source:
    """Deterministic learnable images: a smooth random pattern per class plus per-image Gaussian noise."""
    size = image_size or 32
    coarse = torch.rand(classes, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    patterns = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def draw(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        labels = torch.randperm(n, generator=gen) % classes  # balanced classes in random order
        noise = SYNTHETIC_NOISE * torch.randn(n, 3, size, size, generator=gen)
        return (patterns[labels] + noise).clamp(0.0, 1.0), labels

    train_images, train_labels = draw(train_size, seed=1)
    test_images, test_labels = draw(test_size, seed=2)
    return _in_memory_source(train_images, train_labels, test_images, test_labels, classes, augment, flip=False)


def _in_memory_source(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    augment: bool,
    flip: bool,
) -> Source:
    """Normalise [0, 1] images with the training set's per-channel statistics and wrap both splits in memory."""
    mean = train_images.mean(dim=(0, 2, 3))
    std = train_images.std(dim=(0, 2, 3))

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return ((images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).contiguous()

    size = train_images.shape[-1]
    black = tuple((-mean / std).tolist())
    augmentation = RandomCropFlip(crop_padding(size), flip, fill=black) if augment else None
    return Source(
        train=TensorImageDataset(normalise(train_images), train_labels),
        test=TensorImageDataset(normalise(test_images), test_labels),
        num_classes=num_classes,
        image_size=size,
        stats=(tuple(mean.tolist()), tuple(std.tolist())),
        train_transform=augmentation,
        eval_transform=None,
    )
