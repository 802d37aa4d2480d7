"""The linear-probe transfer protocol of the reference implementation (github.com/winycg/HSAKD, ``eval_rep.py``),
as the defaults of a ``probe`` job: frozen features, a fresh linear classifier trained with Nesterov SGD at lr 0.1
without weight decay for 100 epochs (x0.1 at 30, 60, 90), batch 64, images at 32 px; for STL-10 and Tiny ImageNet
also its augmentation (RandomResizedCrop + flip, tested on the resized image) and normalisation.

A probe config states only what differs (dataset, checkpoint); a key it sets wins over these defaults.
"""
from __future__ import annotations

from typing import Any

# (dotted config key, value, where eval_rep.py sets it: line and code)
PROBE_PROTOCOL: tuple[tuple[str, Any, str], ...] = (
    ("optim.lr", 0.1, "30: --init-lr default=0.1"),
    ("optim.weight_decay", 0.0, "31: --weight-decay default=0"),
    ("optim.milestones", [30, 60, 90], "32: --milestones default=[30, 60, 90]"),
    ("optim.warmup_epochs", 0, "33: --warmup-epoch default=0"),
    ("train.epochs", 100, "34: --epochs default=100"),
    ("train.batch_size", 64, "35: --batch-size default=64"),
    ("train.seed", 0, "38: --manual_seed default=0"),
    ("optim.momentum", 0.9, "149-150: optim.SGD(net.classifier.parameters(), momentum=0.9, ...)"),
    ("optim.nesterov", True, "150: nesterov=True"),
    ("optim.schedule", "multistep", "194: init_lr * 0.1 ** bisect_right(milestones, epoch)"),
    ("optim.gamma", 0.1, "194: 0.1 ** ..."),
    ("data.image_size", 32, "80, 88, 103, 112: RandomResizedCrop(32) to train, Resize(32) to test"),
    ("data.val_fraction", 0.0, "86, 109: scored on the test split (STL-10 test, Tiny ImageNet val)"),
)


# The data pipeline of the two datasets eval_rep.py transfers to: RandomResizedCrop(32) + flip to train, Resize(32)
# to test (data.augment resized_crop_flip at 32 px), and its normalisation of each.
PROBE_DATA: dict[str, tuple[tuple[str, Any, str], ...]] = {
    "stl10": (
        ("data.augment", "resized_crop_flip", "80-81, 88: RandomResizedCrop(32), RandomHorizontalFlip(); Resize(32)"),
        ("data.flip", True, "81: transforms.RandomHorizontalFlip()"),
        ("data.mean", [0.5, 0.5, 0.5], "83, 90: transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))"),
        ("data.std", [0.5, 0.5, 0.5], "83, 90"),
    ),
    "tinyimagenet": (
        ("data.augment", "resized_crop_flip", "103-104, 112: RandomResizedCrop(32), RandomHorizontalFlip(); "
         "Resize(32)"),
        ("data.flip", True, "104: transforms.RandomHorizontalFlip()"),
        ("data.mean", [0.485, 0.456, 0.406], "106, 114: transforms.Normalize((0.485, 0.456, 0.406), "
         "(0.229, 0.224, 0.225))"),
        ("data.std", [0.229, 0.224, 0.225], "106, 114"),
    ),
}


def probe_defaults(dataset: str | None = None) -> dict:
    """The protocol as a nested raw config (the base a probe job's YAML is laid over), with the data pipeline of
    ``dataset`` when eval_rep.py has one for it."""
    raw: dict = {}
    for key, value, _ in PROBE_PROTOCOL + PROBE_DATA.get(dataset or "", ()):
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = list(value) if isinstance(value, list) else value
    return raw
