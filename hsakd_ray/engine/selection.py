"""Which epoch a job keeps as its checkpoint, and what it reports at the end (docs/method.md, final protocol).

The test set never chooses anything: when the evaluation split is the test set (``data.val_fraction`` 0) the kept
checkpoint is the last epoch. With a validation split, a student (or probe) keeps its best ``val/top1`` epoch; a
jointly trained teacher keeps its last epoch, as the reference's students load it; a frozen-backbone teacher keeps
the epoch of best head self-supervised accuracy on the validation split (its backbone top-1 does not move).
"""
from __future__ import annotations

from collections.abc import Mapping

from ..config import Config
from ..data import eval_split

BEST_HEAD_SSL = "best_head_ssl_acc"  # the largest per-head self-supervised accuracy (distill/metrics.py)
SUMMARY_NAMES = ("top1_last", "top1_best_epoch", "top1_best_epoch_num")  # logged once, at the end of a job


def is_summary_metric(key: str) -> bool:
    """``test/top1_last`` and the like: a job's end-of-run summary, not a per-epoch metric."""
    return key.rpartition("/")[2] in SUMMARY_NAMES


def kept_metric(cfg: Config, kind: str) -> str | None:
    """The metric whose best (max) epoch is the kept checkpoint; None: the last epoch."""
    split = eval_split(cfg.data)
    if split == "test":
        return None
    if kind == "teacher":
        frozen_with_heads = cfg.teacher.mode == "frozen" and cfg.teacher.aux_stages != []
        return f"{split}/{BEST_HEAD_SSL}" if frozen_with_heads else None
    return f"{split}/top1"


def describe_kept(metric: str | None, epoch: int | None = None) -> str:
    """``last epoch`` or ``best val/top1 (epoch 7)``: how the kept checkpoint was chosen."""
    if metric is None:
        return "last epoch"
    return f"best {metric}" + (f" (epoch {epoch})" if epoch is not None else "")


def top1_summary(history: Mapping[int, float], split: str) -> dict[str, float]:
    """The last epoch's and the best epoch's top-1 of the eval split (what the paper reports), and that epoch.

    Ties go to the earliest epoch. Empty history: nothing to report."""
    if not history:
        return {}
    last = max(history)
    best = min(history, key=lambda e: (-history[e], e))
    values = (float(history[last]), float(history[best]), float(best))
    return {f"{split}/{name}": value for name, value in zip(SUMMARY_NAMES, values, strict=True)}
