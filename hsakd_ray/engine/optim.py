"""SGD and the per-epoch learning-rate schedule (multistep or cosine, with linear warm-up)."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ..config import OptimConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig,
                    fused: bool | None = None) -> torch.optim.SGD:
    params = [p for p in params if p.requires_grad]
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay, fused=fused)


def lr_factor(epoch: int, cfg: OptimConfig, total_epochs: int) -> float:
    """Multiplier of the base lr for 0-based ``epoch``."""
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return (epoch + 1) / cfg.warmup_epochs
    if cfg.schedule == "multistep":
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        span = max(1, total_epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    return 1.0


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    total_epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, cfg, total_epochs))
