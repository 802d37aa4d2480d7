"""Published augmentation and normalisation per dataset family (docs/method.md, "Published settings"), and the
view that applies them."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]  # per-channel (mean, std)

CIFAR100_STATS: Stats = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
CIFAR10_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
STL10_STATS: Stats = ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))
TINYIMAGENET_STATS: Stats = ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821))

Pipelines = tuple[Callable[[Any], torch.Tensor], Callable[[Any], torch.Tensor]]  # (train, eval)


def crop_padding(size: int) -> int:
    """Padding of the random crop: CIFAR's 4 px at 32 px, scaled with the image size."""
    return max(1, size // 8)


def crop_flip_pipelines(native_size: int, size: int, stats: Stats, augment: bool) -> Pipelines:
    """CIFAR-style PIL pipelines: random crop with padding + horizontal flip, resizing first when ``size`` differs."""
    resize = [T.Resize((size, size))] if size != native_size else []
    to_tensor = [T.ToTensor(), T.Normalize(*stats)]
    eval_tf = T.Compose(resize + to_tensor)
    if not augment:
        return eval_tf, eval_tf
    crop_flip = [T.RandomCrop(size, padding=crop_padding(size)), T.RandomHorizontalFlip()]
    return T.Compose(resize + crop_flip + to_tensor), eval_tf


def imagenet_pipelines(size: int, stats: Stats, augment: bool) -> Pipelines:
    """ImageNet-style: RandomResizedCrop + flip to train; resize to size*256/224 and centre crop to evaluate."""
    to_tensor = [T.ToTensor(), T.Normalize(*stats)]
    eval_tf = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), *to_tensor])
    if not augment:
        return eval_tf, eval_tf
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *to_tensor]), eval_tf


class RandomCropFlip:
    """Random crop with padding (optionally + horizontal flip) on normalised tensors, one offset per image.

    Works on one image (C, H, W) or a batch (B, C, H, W) on any device, so GPU-resident training can apply the same
    augmentation per batch. Padding takes the value of a black pixel after normalisation (``fill``), matching
    torchvision's ``RandomCrop(padding=...)`` applied before ``Normalize``.
    """

    def __init__(self, padding: int, flip: bool, fill: tuple[float, ...]) -> None:
        self.padding = padding
        self.flip = flip
        self.fill = fill
        self._fill_tensors: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def fill_tensor(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``fill`` as a (1, C, 1, 1) tensor, made once per dtype and device (a host-to-GPU copy per batch would
        wait for the GPU)."""
        key = (dtype, device)
        if key not in self._fill_tensors:
            self._fill_tensors[key] = torch.tensor(self.fill, dtype=dtype, device=device).view(1, -1, 1, 1)
        return self._fill_tensors[key]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``generator``: the draws' source (None: torch's global RNG, as torchvision's transforms use)."""
        single = x.dim() == 3
        batch = x.unsqueeze(0) if single else x
        b, c, h, w = batch.shape
        p = self.padding
        fill = self.fill_tensor(batch.dtype, batch.device)
        padded = fill.expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = batch
        top = torch.randint(0, 2 * p + 1, (b, 1), device=batch.device, generator=generator)
        left = torch.randint(0, 2 * p + 1, (b, 1), device=batch.device, generator=generator)
        rows = (top + torch.arange(h, device=batch.device)).view(b, 1, h, 1)
        cols = (left + torch.arange(w, device=batch.device)).view(b, 1, 1, w)
        images = torch.arange(b, device=batch.device).view(b, 1, 1, 1)
        channels = torch.arange(c, device=batch.device).view(1, c, 1, 1)
        out = padded[images, channels, rows, cols]
        if self.flip:
            flipped = torch.rand(b, device=batch.device, generator=generator) < 0.5
            out = torch.where(flipped.view(b, 1, 1, 1), out.flip(-1), out)
        return out[0] if single else out


class Transformed(Dataset):
    """``base`` with ``transform`` applied to each image, so one loaded dataset serves a training and an eval view."""

    def __init__(self, base: Dataset, transform: Callable[[Any], torch.Tensor] | None) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return (self.transform(image) if self.transform is not None else image), label
