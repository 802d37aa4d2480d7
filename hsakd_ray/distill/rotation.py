"""The self-supervised augmented task: every image in 4 rotations with joint (class x rotation) labels."""
from __future__ import annotations

import torch


def rotate_batch(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W), (B,) -> (4B, C, H, W), (4B,).

    Row ``4*i + k`` is image i rotated by k*90 degrees, with joint label ``4*y_i + k``.

    One ``stack`` of the four rotations, then a reshape, keeps rows image-major (docs/method.md, "The rotation task").
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    rotated = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)], dim=1)
    x_rot = rotated.reshape(-1, *x.shape[1:])
    joint = (4 * y.unsqueeze(1) + torch.arange(4, device=y.device)).reshape(-1)
    return x_rot, joint


def unrotated(t: torch.Tensor) -> torch.Tensor:
    """Rows with k = 0 (every 4th row from 0): the original images' outputs."""
    return t[::4]
