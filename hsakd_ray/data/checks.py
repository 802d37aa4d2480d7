"""Checks of a data config that belong before a job starts (seconds, no images decoded, nothing written):
the dataset's files and folders exist, an image tree's evaluation classes match its training classes, and a
batch is not larger than the training set."""
from __future__ import annotations

import os
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

from ..config import DataConfig
from ..errors import DataError
from .disk import (
    IMAGEFOLDER_FIX,
    TINYIMAGENET_FIX,
    TORCHVISION_SETS,
    check_same_classes,
    folder_roots,
    require_path,
    require_torchvision_files,
)
from .splits import split_indices

# Images per class in the training split of the fixed-size published datasets (their files are never decoded here)
TRAIN_PER_CLASS = {"cifar100": (100, 500), "cifar10": (10, 5000), "stl10": (10, 500)}


def class_folders(path: Path) -> list[str]:
    """The class folders of an ImageFolder tree, as torchvision orders them (sorted directory names)."""
    return sorted(entry.name for entry in os.scandir(path) if entry.is_dir())


def count_images(path: Path) -> int:
    """Image files under ``path`` (any depth), by the extensions torchvision's ImageFolder reads."""
    return sum(name.lower().endswith(IMG_EXTENSIONS) for _, _, files in os.walk(path) for name in files)


def check_image_trees(cfg: DataConfig) -> dict[str, int]:
    """``imagefolder`` / ``tinyimagenet``: both trees exist, hold class folders, the same ones for a folder-per-class
    evaluation tree. Returns the training images per class."""
    train_dir, val_dir = folder_roots(cfg)
    fixes = IMAGEFOLDER_FIX if cfg.name == "imagefolder" else (TINYIMAGENET_FIX, TINYIMAGENET_FIX)
    kind = "validation" if cfg.name == "tinyimagenet" else "evaluation"
    require_path(train_dir, f"{cfg.name} training set", fixes[0])
    require_path(val_dir, f"{cfg.name} {kind} set", fixes[1])
    classes = class_folders(train_dir)
    if not classes:
        raise DataError(f"{cfg.name} training set {train_dir} holds no class folders (one folder of images per class)")
    per_class_val = not (cfg.name == "tinyimagenet" and (val_dir / "val_annotations.txt").is_file())
    if per_class_val:
        check_same_classes(classes, class_folders(val_dir), val_dir)
    counts = {name: count_images(train_dir / name) for name in classes}
    refuse_empty_classes(counts, f"{cfg.name} training set {train_dir}")
    if per_class_val:
        val_counts = {name: count_images(val_dir / name) for name in classes}
        refuse_empty_classes(val_counts, f"{cfg.name} {kind} set {val_dir}")
    return counts


def refuse_empty_classes(counts: dict[str, int], where: str) -> None:
    """An image tree's class folders must each hold an image: an empty one fails every run that reads the tree."""
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"{where}: class folders without images: {empty[:5]} "
                        f"(extensions read: {', '.join(IMG_EXTENSIONS)})")


def class_names(cfg: DataConfig) -> list[str] | None:
    """The class folder names of an image tree (None for the other datasets: their classes are numbers)."""
    return class_folders(folder_roots(cfg)[0]) if cfg.name in ("imagefolder", "tinyimagenet") else None


def check_split_sizes(cfg: DataConfig, targets: list[int]) -> None:
    """A validation hold-out (``val_fraction`` > 0) takes at least one image of every class and leaves one to train
    on: a class with fewer than two training images cannot be split."""
    if cfg.val_fraction <= 0:
        return
    per_class: dict[int, int] = {}
    for label in targets:
        per_class[label] = per_class.get(label, 0) + 1
    few = [label for label, n in sorted(per_class.items()) if n < 2]
    if few:
        names = class_names(cfg)
        shown = [names[label] if names else label for label in few[:5]]
        raise DataError(f"data.val_fraction {cfg.val_fraction} holds out images of every class, but {len(few)} "
                        f"class(es) of {cfg.name} have a single training image ({shown}): add images, or set "
                        "data.val_fraction to 0 to evaluate on the test split")


def training_targets(cfg: DataConfig) -> list[int]:
    """The label of every image of the training split before the validation hold-out, without decoding images.

    Only counts per class matter for the split sizes; fixed-size published sets are known, image trees are listed,
    and the in-memory sets (digits, synthetic) are small enough to build."""
    if cfg.name in TRAIN_PER_CLASS:
        classes, per_class = TRAIN_PER_CLASS[cfg.name]
        return [c for c in range(classes) for _ in range(per_class)]
    if cfg.name in ("imagefolder", "tinyimagenet"):
        counts = check_image_trees(cfg)
        return [c for c, n in enumerate(counts.values()) for _ in range(n)]
    from .registry import load_source
    from .splits import dataset_targets

    return dataset_targets(load_source(cfg).train)


def check_data(cfg: DataConfig, batch_size: int) -> int:
    """Refuse a data config that cannot run, before anything starts; returns the number of training images."""
    if cfg.name in TORCHVISION_SETS and not cfg.download:
        require_torchvision_files(cfg)
    targets = training_targets(cfg)
    check_split_sizes(cfg, targets)
    train_idx, _ = split_indices(targets, cfg.val_fraction, cfg.few_shot_ratio, cfg.split_seed)
    if batch_size > len(train_idx):
        carved = " after the validation split" if cfg.val_fraction > 0 else ""
        carved += " and the few-shot subset" if cfg.few_shot_ratio < 1 else ""
        raise DataError(f"train.batch_size {batch_size} is larger than the training set ({len(train_idx)} images of "
                        f"{cfg.name}{carved}): every epoch would be one partial step; set train.batch_size to at most "
                        f"{len(train_idx)}")
    return len(train_idx)
