"""Datasets read from disk in their published layouts: CIFAR-10/100, STL-10, image folders, Tiny ImageNet.

Checksums: with ``data.download: false`` the ``Local*`` classes below run torchvision's own parsing but check that each
file exists instead of hashing it (torchvision's ``check_integrity`` with ``md5=None``). Hashing 160 MB (CIFAR) or
2.6 GB (STL-10) at every trial and worker start costs seconds for nothing, since a damaged file still fails when parsed,
and it would refuse copies in the real format produced elsewhere (the tests generate such files). With
``data.download: true`` the stock torchvision classes run unchanged, download and md5 verification included.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, STL10, ImageFolder
from torchvision.datasets.folder import default_loader

from ..config import DataConfig
from ..errors import DataError, DataNotFoundError
from .memory import TensorImageDataset
from .source import Source
from .transforms import (
    CIFAR10_STATS,
    CIFAR100_STATS,
    SMALL_IMAGE_MAX,
    STL10_STATS,
    TINYIMAGENET_STATS,
    RandomCropFlip,
    Stats,
    auto_policy,
    crop_flip_pipelines,
    crop_padding,
    normalisation,
    pil_pipelines,
    resolve_flip,
    resolve_policy,
)

FOLDER_SAMPLE = 1000  # images read to find an image folder's typical size and its mean/std
IMAGENET_SIZE = 224   # image_size of a folder of large images when data.image_size is null


def _existence_only(files: list[list[str]]) -> list[list[str | None]]:
    return [[name, None] for name, _ in files]


class LocalCIFAR10(CIFAR10):
    """CIFAR-10 already on disk: torchvision's parsing, file existence instead of md5 (see the module docstring)."""

    train_list = _existence_only(CIFAR10.train_list)
    test_list = _existence_only(CIFAR10.test_list)
    meta = {**CIFAR10.meta, "md5": None}


class LocalCIFAR100(CIFAR100):
    """CIFAR-100 already on disk: torchvision's parsing, file existence instead of md5 (see the module docstring)."""

    train_list = _existence_only(CIFAR100.train_list)
    test_list = _existence_only(CIFAR100.test_list)
    meta = {**CIFAR100.meta, "md5": None}


class LocalSTL10(STL10):
    """STL-10 already on disk: torchvision's parsing, file existence instead of md5 (see the module docstring)."""

    train_list = _existence_only(STL10.train_list)
    test_list = _existence_only(STL10.test_list)


def require_path(path: Path, what: str, fix: str) -> None:
    """Raise a one-line DataNotFoundError naming ``path`` and how to fix it when ``path`` does not exist."""
    if not path.exists():
        raise DataNotFoundError(f"{what} not found: {path} does not exist; {fix}")


TORCHVISION_SETS: dict[str, type[Dataset]] = {"cifar100": CIFAR100, "cifar10": CIFAR10, "stl10": STL10}


def require_torchvision_files(cfg: DataConfig) -> None:
    """Every file torchvision will parse for ``cfg.name`` exists under ``cfg.root`` (when not downloading)."""
    stock = TORCHVISION_SETS[cfg.name]
    folder = Path(cfg.root) / stock.base_folder
    files = [name for name, _ in stock.train_list + stock.test_list]
    if hasattr(stock, "meta"):
        files.append(stock.meta["filename"])
    fix = f"set data.download: true to fetch it, or data.root to the directory that holds {stock.base_folder}/"
    for path in [folder] + [folder / name for name in files]:
        require_path(path, f"{cfg.name} data", fix)


def _torchvision_splits(
    cfg: DataConfig, stock: type[Dataset], local: type[Dataset], train_kw: dict, test_kw: dict
) -> tuple[Dataset, Dataset]:
    """Train and test sets of a downloadable torchvision dataset: stock class to download, ``local`` to read."""
    if cfg.download:
        return stock(cfg.root, download=True, **train_kw), stock(cfg.root, download=True, **test_kw)
    require_torchvision_files(cfg)
    return local(cfg.root, **train_kw), local(cfg.root, **test_kw)


def cifar_source(cfg: DataConfig) -> Source:
    """CIFAR-100 or CIFAR-10 (by ``cfg.name``) with the published crop + flip augmentation."""
    stock, local, published, classes = {
        "cifar100": (CIFAR100, LocalCIFAR100, CIFAR100_STATS, 100),
        "cifar10": (CIFAR10, LocalCIFAR10, CIFAR10_STATS, 10),
    }[cfg.name]
    train, test = _torchvision_splits(cfg, stock, local, {"train": True}, {"train": False})
    stats = normalisation(cfg.mean, cfg.std, published)
    size = cfg.image_size or 32
    flip = resolve_flip(cfg.flip, True)
    if size != 32 or cfg.augment == "resized_crop_flip":  # torchvision's PIL pipeline per item
        return Source(train, test, classes, size, stats, *crop_flip_pipelines(32, size, stats, cfg.augment, flip))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in stats)
    black = ((0.0 - mean) / std).flatten().tolist()  # a zero pixel after Normalize: RandomCrop's padding
    augment = RandomCropFlip(crop_padding(size), flip, fill=tuple(black)) if cfg.augment != "none" else None
    return Source(cifar_in_memory(train, stats), cifar_in_memory(test, stats), classes, size, stats, augment, None)


def cifar_in_memory(ds: CIFAR10, stats: Stats) -> TensorImageDataset:
    """A CIFAR split as normalised tensors: ``ToTensor`` + ``Normalize`` done once for the whole set, bit for bit the
    values the PIL pipeline gives per item, so training can hold it on the device and crop/flip there
    (``train.device_data``). 50,000 images take 614 MB as float32."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in stats)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div(255)
    return TensorImageDataset(images.sub(mean).div(std).contiguous(), torch.tensor(ds.targets, dtype=torch.long))


def stl10_source(cfg: DataConfig) -> Source:
    """STL-10's labelled train (5,000) and test (8,000) splits, 96 px native."""
    train, test = _torchvision_splits(cfg, STL10, LocalSTL10, {"split": "train"}, {"split": "test"})
    size = cfg.image_size or 96
    stats = normalisation(cfg.mean, cfg.std, STL10_STATS)
    pipelines = crop_flip_pipelines(96, size, stats, cfg.augment, resolve_flip(cfg.flip, True))
    return Source(train, test, 10, size, stats, *pipelines)


def checked_loader(path: str) -> object:
    """torchvision's image loader, with an image it cannot decode refused in one line naming the file (a data error
    that every retry would meet again)."""
    try:
        return default_loader(path)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: UnidentifiedImageError (an OSError), truncated files
        raise undecodable(path, exc) from None


def undecodable(path: str, exc: Exception) -> DataError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataError(f"cannot decode image {path}: {reason}; remove or replace the file")


def _image_folder(path: Path, what: str, fix: str) -> ImageFolder:
    require_path(path, what, fix)
    return ImageFolder(path, loader=checked_loader)


def _check_same_classes(train: ImageFolder, test: ImageFolder, test_dir: Path) -> None:
    check_same_classes(train.classes, test.classes, test_dir)


def check_same_classes(train: list[str], test: list[str], test_dir: Path) -> None:
    """The evaluation tree must hold exactly the training tree's class folders (labels are folder indices)."""
    if train != test:
        only_test, only_train = sorted(set(test) - set(train)), sorted(set(train) - set(test))
        raise DataError(f"class folders of {test_dir} differ from the training set's: only in {test_dir.name}/: "
                        f"{only_test[:5]}, missing there: {only_train[:5]}; both trees need the same class folders")


IMAGEFOLDER_FIX = ("set data.train_root (or data.root holding train/)", "set data.val_root (or data.root holding val/)")
TINYIMAGENET_FIX = "set data.root to the directory that holds tiny-imagenet-200/ (or data.train_root / data.val_root)"


def folder_roots(cfg: DataConfig) -> tuple[Path, Path]:
    """(training tree, evaluation tree) of an ``imagefolder`` or ``tinyimagenet`` config."""
    if cfg.name == "tinyimagenet":
        nested = Path(cfg.root) / "tiny-imagenet-200"
        base = nested if nested.is_dir() else Path(cfg.root)
    else:
        base = Path(cfg.root)
    train_dir = Path(cfg.train_root) if cfg.train_root else base / "train"
    val_dir = Path(cfg.val_root) if cfg.val_root else base / "val"
    return train_dir, val_dir


def folder_sample(folder: ImageFolder, limit: int = FOLDER_SAMPLE) -> list[str]:
    """Paths of up to ``limit`` images spread evenly over ``folder`` (sorted by class, so every class is drawn)."""
    n = len(folder.samples)
    picks = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int)) if n else []
    return [folder.samples[i][0] for i in picks]


def typical_size(paths: list[str]) -> int:
    """Median shorter side of the images at ``paths``, read from their headers without decoding the pixels."""
    sides = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, SyntaxError, ValueError) as exc:
            raise undecodable(path, exc) from None
    return int(np.median(sides))


def folder_stats(folder: ImageFolder, limit: int = FOLDER_SAMPLE) -> Stats:
    """Per-channel mean and standard deviation of the pixels (in [0, 1], as ``ToTensor`` gives them) of the training
    images as stored, converted to RGB by the folder's loader; over an even sample of ``limit`` images if there are
    more."""
    total, squares, count = np.zeros(3), np.zeros(3), 0
    for path in folder_sample(folder, limit):
        pixels = np.asarray(folder.loader(path), dtype=np.float64).reshape(-1, 3) / 255.0
        total += pixels.sum(axis=0)
        squares += np.square(pixels).sum(axis=0)
        count += len(pixels)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    if np.any(std < 1e-6):
        raise DataError(f"the training images of {folder.root} are uniform in a channel (std 0): set data.mean and "
                         "data.std")
    return tuple(mean.tolist()), tuple(std.tolist())


def imagefolder_source(cfg: DataConfig) -> Source:
    """Class-per-folder trees (``train_root`` / ``val_root``, by default ``root``/train and /val) of any image size.

    ``image_size`` null keeps small images (median shorter side <= SMALL_IMAGE_MAX) at their size and trains larger
    ones at 224 px; ``augment: auto`` picks by the smaller of the stored and the trained size, and ``flip: auto``
    flips only large ones; mean/std are computed from the training images unless given.
    """
    train_dir, val_dir = folder_roots(cfg)
    train = _image_folder(train_dir, "imagefolder training set", IMAGEFOLDER_FIX[0])
    test = _image_folder(val_dir, "imagefolder evaluation set", IMAGEFOLDER_FIX[1])
    _check_same_classes(train, test, val_dir)
    stored = typical_size(folder_sample(train))
    size = cfg.image_size or (stored if stored <= SMALL_IMAGE_MAX else IMAGENET_SIZE)
    seen = min(stored, size)
    stats = normalisation(cfg.mean, cfg.std, lambda: folder_stats(train))
    flip = resolve_flip(cfg.flip, seen > SMALL_IMAGE_MAX)  # small images: often digits or letters, see docs
    pipelines = pil_pipelines(resolve_policy(cfg.augment, seen), size, stats, flip, resize=True,
                              eval_geometry=auto_policy(seen))
    return Source(train, test, len(train.classes), size, stats, *pipelines)


class TinyImageNetVal(Dataset):
    """Tiny ImageNet's validation set: images in val/images, labels in val/val_annotations.txt (file, wnid, box)."""

    def __init__(self, val_dir: Path, class_to_idx: dict[str, int]) -> None:
        annotations = val_dir / "val_annotations.txt"
        self.samples: list[tuple[Path, int]] = []
        for line_no, line in enumerate(annotations.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2 or fields[1] not in class_to_idx:
                raise DataError(f"{annotations}:{line_no}: expected 'FILE WNID ...' with a WNID of the training set")
            self.samples.append((val_dir / "images" / fields[0], class_to_idx[fields[1]]))
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[object, int]:
        path, label = self.samples[index]
        return checked_loader(str(path)), label


def tinyimagenet_source(cfg: DataConfig) -> Source:
    """Tiny ImageNet (200 classes, 64 px) in its published layout under ``root`` (or ``root``/tiny-imagenet-200)."""
    train_dir, val_dir = folder_roots(cfg)
    fix = TINYIMAGENET_FIX
    # train/<wnid>/images/*.JPEG: ImageFolder finds the images by walking each class folder
    train = _image_folder(train_dir, "tinyimagenet training set", fix)
    require_path(val_dir, "tinyimagenet validation set", fix)
    if (val_dir / "val_annotations.txt").is_file():
        test: Dataset = TinyImageNetVal(val_dir, train.class_to_idx)
    else:
        test = ImageFolder(val_dir, loader=checked_loader)
        _check_same_classes(train, test, val_dir)
    size = cfg.image_size or 64
    stats = normalisation(cfg.mean, cfg.std, TINYIMAGENET_STATS)
    pipelines = crop_flip_pipelines(64, size, stats, cfg.augment, resolve_flip(cfg.flip, True))
    return Source(train, test, len(train.classes), size, stats, *pipelines)
