"""Evaluation metrics of docs/method.md, "Evaluation", as sums that can be added across batches and workers."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def topk_correct(logits: torch.Tensor, y: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[torch.Tensor]:
    """Number of rows whose label is among the top-k logits, for each k (k capped at the class count)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == y.unsqueeze(1)
    return [hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


def head_class_logits(q: torch.Tensor) -> torch.Tensor:
    """(R, 4N) joint logits -> (R, N) class logits by summing the 4 rotation logits of each class."""
    return q.reshape(q.shape[0], -1, 4).sum(dim=2)


def eval_sums(logits: torch.Tensor, y: torch.Tensor, aux_logits: Sequence[torch.Tensor] = (),
              joint_y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Correct-count sums for one batch: top-1/top-5 of ``logits`` (unrotated rows) against ``y``; per head the
    self-supervised accuracy over all rotated rows and the class accuracy of the rotation-summed logits.

    Counts are normalised by ``finalize_metrics`` once every batch (and worker) has been added.
    """
    top1, top5 = topk_correct(logits, y)
    sums = {"top1": top1, "top5": top5, "n": torch.tensor(y.shape[0], device=y.device)}
    if aux_logits:
        y_rot = joint_y // 4
        sums["n_rot"] = torch.tensor(joint_y.shape[0], device=y.device)
        for i, q in enumerate(aux_logits):
            sums[f"head_{i}_ssl_acc"] = (q.argmax(dim=1) == joint_y).sum()
            sums[f"head_{i}_class_acc"] = (head_class_logits(q).argmax(dim=1) == y_rot).sum()
    return sums


def finalize_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Turn summed counts into accuracies in percent; with heads, ``best_head_ssl_acc`` is the largest per-head
    self-supervised accuracy (what a frozen-backbone teacher is chosen by)."""
    n = float(sums["n"])
    out = {"top1": 100.0 * float(sums["top1"]) / n, "top5": 100.0 * float(sums["top5"]) / n}
    for key, value in sums.items():
        if key.startswith("head_"):
            out[key] = 100.0 * float(value) / float(sums["n_rot"])
    ssl = [v for k, v in out.items() if k.endswith("_ssl_acc")]
    if ssl:
        out["best_head_ssl_acc"] = max(ssl)
    return out
