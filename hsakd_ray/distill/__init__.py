"""The distillation maths: rotation task, losses and metrics as plain functions on tensors.

Its names are imported on first use, so a process that only reads ``distill.methods`` (a Tune trial's, building its
config) does not import torch."""
from __future__ import annotations

import importlib

_HOMES = {
    "losses": ("ce_loss", "kd_loss", "kl_div_t", "mutual_loss", "student_loss", "teacher_loss"),
    "metrics": ("eval_sums", "finalize_metrics", "head_class_logits", "topk_correct"),
    "rotation": ("rotate_batch", "unrotated"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
