"""The linear-probe transfer protocol of the reference implementation (github.com/winycg/HSAKD, ``eval_rep.py``),
as the defaults of a ``probe`` job: frozen features, a fresh linear classifier trained with Nesterov SGD at lr 0.1
without weight decay for 100 epochs (x0.1 at 30, 60, 90), batch 64, images at 32 px.

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


def probe_defaults() -> dict:
    """The protocol as a nested raw config (the base a probe job's YAML is laid over)."""
    raw: dict = {}
    for key, value, _ in PROBE_PROTOCOL:
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = list(value) if isinstance(value, list) else value
    return raw
