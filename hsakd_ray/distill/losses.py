"""HSAKD losses as pure functions on logits (docs/method.md, "Losses").

Each returns a dict of scalar tensors: the total under ``"loss"``, every part under its own name, so each part can
be logged as a metric and each weight tuned. Every loss is computed in fp32 from logits upcast with ``.float()``,
also when the networks ran under bf16 autocast: soft targets, KL and cross-entropy never round to bf16.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .rotation import unrotated


def kl_div_t(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes and averaged over rows.

    Always in fp32, also under bf16 autocast: the logits are upcast first, so the soft targets and the KL (a small
    difference of near-equal distributions) never round to bf16's 8-bit mantissa.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def teacher_loss(logits: torch.Tensor, aux_logits: Sequence[torch.Tensor], y: torch.Tensor,
                 joint_y: torch.Tensor) -> dict[str, torch.Tensor]:
    """``CE(p[k=0], y) + sum_l CE(q_l, joint_y)`` on an augmented batch."""
    parts = {"ce": F.cross_entropy(unrotated(logits).float(), y)}
    for i, q in enumerate(aux_logits):
        parts[f"aux_ce_{i}"] = F.cross_entropy(q.float(), joint_y)
    parts["loss"] = sum(parts.values())
    return parts


def _head_weights(head_weights: Sequence[float] | None, n: int) -> Sequence[float]:
    if head_weights is None:
        return [1.0] * n
    if len(head_weights) != n:
        raise ValueError(f"head_weights has {len(head_weights)} entries for {n} paired heads")
    return head_weights


def student_loss(s_logits: torch.Tensor, s_aux: Sequence[torch.Tensor], t_logits: torch.Tensor,
                 t_aux: Sequence[torch.Tensor], y: torch.Tensor, temperature: float = 3.0, alpha: float = 1.0,
                 beta: float = 1.0, head_temperature: float | None = None,
                 head_weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """HSAKD student loss: CE on unrotated rows + alpha * weighted head KLs + beta * final-layer KL over all rows.

    ``s_aux`` and ``t_aux`` are paired one-to-one (the caller selects the teacher heads at the student's stages).
    """
    if len(s_aux) != len(t_aux):
        raise ValueError(f"{len(s_aux)} student heads but {len(t_aux)} teacher heads to pair with")
    t_logits, t_aux = t_logits.detach(), [q.detach() for q in t_aux]  # the teacher's outputs are targets only
    head_t = temperature if head_temperature is None else head_temperature
    parts = {"ce": F.cross_entropy(unrotated(s_logits).float(), y)}
    weights = _head_weights(head_weights, len(s_aux))
    head_terms = []
    for i, (q_s, q_t, w) in enumerate(zip(s_aux, t_aux, weights)):
        parts[f"kl_head_{i}"] = kl_div_t(q_t, q_s, head_t)
        head_terms.append(w * parts[f"kl_head_{i}"])
    parts["kl_final"] = kl_div_t(t_logits, s_logits, temperature)
    heads = torch.stack(head_terms).sum() if head_terms else s_logits.new_zeros((), dtype=torch.float32)
    parts["loss"] = parts["ce"] + alpha * heads + beta * parts["kl_final"]
    return parts


def kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, y: torch.Tensor, temperature: float = 4.0,
            beta: float = 1.0) -> dict[str, torch.Tensor]:
    """Plain Hinton KD on unrotated images: ``CE(s, y) + beta * KL_T(t || s)``."""
    parts = {"ce": F.cross_entropy(s_logits.float(), y),
             "kl_final": kl_div_t(t_logits.detach(), s_logits, temperature)}
    parts["loss"] = parts["ce"] + beta * parts["kl_final"]
    return parts


def ce_loss(s_logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The student alone: cross-entropy on unrotated images."""
    ce = F.cross_entropy(s_logits.float(), y)
    return {"ce": ce, "loss": ce}


def mutual_loss(own_logits: torch.Tensor, own_aux: Sequence[torch.Tensor], peer_logits: torch.Tensor,
                peer_aux: Sequence[torch.Tensor], y: torch.Tensor, joint_y: torch.Tensor, temperature: float = 3.0,
                alpha: float = 1.0, beta: float = 1.0,
                head_temperature: float | None = None) -> dict[str, torch.Tensor]:
    """Online mutual HSAKD for one network of the pair (docs/method.md, "Losses").

    Own CE on ``p[k=0]`` and on every ``q_l`` with joint labels, plus KL_T towards the peer's detached ``p`` and
    ``q_l`` (heads paired by position).
    """
    if len(own_aux) != len(peer_aux):
        raise ValueError(f"{len(own_aux)} heads cannot pair with the peer's {len(peer_aux)}")
    head_t = temperature if head_temperature is None else head_temperature
    parts = teacher_loss(own_logits, own_aux, y, joint_y)
    del parts["loss"]
    for i, (q, q_peer) in enumerate(zip(own_aux, peer_aux)):
        parts[f"kl_head_{i}"] = kl_div_t(q_peer.detach(), q, head_t)
    parts["kl_final"] = kl_div_t(peer_logits.detach(), own_logits, temperature)
    ce_terms = parts["ce"] + sum(v for k, v in parts.items() if k.startswith("aux_ce_"))
    zero = own_logits.new_zeros((), dtype=torch.float32)
    kl_heads = sum((v for k, v in parts.items() if k.startswith("kl_head_")), zero)
    parts["loss"] = ce_terms + alpha * kl_heads + beta * parts["kl_final"]
    return parts
