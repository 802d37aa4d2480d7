"""One training step of each job kind, top to bottom, in plain PyTorch (the losses: docs/method.md, "Losses").

Every step reads: the batch's views -> (the frozen teacher's outputs) -> the trained network's forward -> loss parts
-> backward -> the optimizer's step. What makes it fast is chosen once and applied around the step, never inside it
(engine/loop.py, ``train_epoch``): the batch arrives on the device in its memory format; ``autocast`` is the
forward's context (bf16 autocast, or nothing); ``teacher`` is where the frozen teacher's outputs come from (its
forward on this thread, in CPU chunks under inference mode; a forward run one batch ahead on a thread of its own;
or a sweep's shared store, engine/teacher_cache.py). The step is the same code whichever is chosen.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from .. import distill as D
from ..config import DistillConfig

Outputs = tuple[torch.Tensor, list[torch.Tensor]]  # a network's (final logits, each head's logits)
TeacherFn = Callable[[torch.Tensor], Outputs]      # the frozen teacher's outputs on these input rows, no gradient
Autocast = Callable[[], AbstractContextManager]    # a new context for each forward: autocast or nullcontext
Parts = dict[str, torch.Tensor]                     # named loss parts; "loss" is the one minimised


def update(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Backward and the optimizer's step (gradients reset to None first, so none carry over between steps)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def hsakd_step(student: nn.Module, teacher: TeacherFn, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, hp: DistillConfig, autocast: Autocast = nullcontext) -> Parts:
    """One HSAKD distillation step: the student learns from a frozen teacher on the 4-rotation batch."""
    with autocast():
        views, _joint = D.rotate_batch(x, y)    # 1. rows 4i..4i+3: image i at 0/90/180/270 degrees, label 4*y_i+k
        t_logits, t_aux = teacher(views)        # 2. the frozen teacher's final and head logits on those rows
        s_logits, s_aux = student(views)        # 3. the student's, on the same rows
        parts = D.student_loss(                 # 4. CE(unrotated rows, y) + alpha * head KLs + beta * final KL
            s_logits, s_aux, t_logits, t_aux, y, temperature=hp.temperature, alpha=hp.alpha, beta=hp.beta,
            head_temperature=hp.head_temperature, head_weights=hp.head_weights)
    update(optimizer, parts["loss"])            # 5. backward, optimizer step
    return parts


def kd_step(student: nn.Module, teacher: TeacherFn, optimizer: torch.optim.Optimizer, x: torch.Tensor,
            y: torch.Tensor, hp: DistillConfig, autocast: Autocast = nullcontext) -> Parts:
    """One Hinton KD step: the student matches the frozen teacher's softened logits on the plain batch."""
    with autocast():
        t_logits, _ = teacher(x)
        s_logits, _ = student(x)
        parts = D.kd_loss(s_logits, t_logits, y, hp.temperature, hp.beta)
    update(optimizer, parts["loss"])
    return parts


def ce_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
            autocast: Autocast = nullcontext) -> Parts:
    """One cross-entropy step on the plain batch (the ``ce`` baseline, a linear probe)."""
    with autocast():
        parts = D.ce_loss(net(x)[0], y)
    update(optimizer, parts["loss"])
    return parts


def teacher_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 autocast: Autocast = nullcontext) -> Parts:
    """One teacher step: the classifier on unrotated rows and every head on the joint (class, rotation) label."""
    with autocast():
        views, joint = D.rotate_batch(x, y)
        logits, aux = net(views)
        parts = D.teacher_loss(logits, aux, y, joint)
    update(optimizer, parts["loss"])
    return parts


def mutual_step(student: nn.Module, peer: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, hp: DistillConfig, autocast: Autocast = nullcontext) -> Parts:
    """One online mutual HSAKD step: student and peer each learn from the other's outputs (one optimizer, both)."""
    with autocast():
        views, joint = D.rotate_batch(x, y)
        s_logits, s_aux = student(views)
        p_logits, p_aux = peer(views)
        kw = dict(temperature=hp.temperature, alpha=hp.alpha, beta=hp.beta, head_temperature=hp.head_temperature)
        own = D.mutual_loss(s_logits, s_aux, p_logits, p_aux, y, joint, **kw)
        other = D.mutual_loss(p_logits, p_aux, s_logits, s_aux, y, joint, **kw)
        parts = {f"student_{k}": v for k, v in own.items()} | {f"peer_{k}": v for k, v in other.items()}
        parts["loss"] = own["loss"] + other["loss"]
    update(optimizer, parts["loss"])
    return parts
