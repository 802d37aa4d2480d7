"""Augmentation policies (published per dataset family, docs/method.md "Published settings", or chosen by image size),
normalisation, and the view that applies them to a dataset."""
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

# Largest image side (px) trained with crop_flip under ``data.augment: auto``; larger images get resized_crop_flip.
# RandomResizedCrop's smallest crop (8 % of the area: 28 % of the side) keeps 9 px of a 32 px digit and 27 px of a
# 96 px image, too little to see the object. Crop with padding is CIFAR's published augmentation (32 px) and this
# project's for Tiny ImageNet (64) and STL-10 (96); RandomResizedCrop is ImageNet's (224).
SMALL_IMAGE_MAX = 96


def auto_policy(size: int) -> str:
    """The augmentation ``data.augment: auto`` picks for images trained at ``size`` px (see ``SMALL_IMAGE_MAX``)."""
    return "crop_flip" if size <= SMALL_IMAGE_MAX else "resized_crop_flip"


def resolve_policy(augment: str, size: int) -> str:
    """``data.augment`` as one of crop_flip, resized_crop_flip, none."""
    return auto_policy(size) if augment == "auto" else augment


def crop_padding(size: int) -> int:
    """Padding of the random crop: CIFAR's 4 px at 32 px, scaled with the image size."""
    return max(1, size // 8)


def pil_pipelines(policy: str, size: int, stats: Stats, flip: bool, resize: bool, eval_geometry: str) -> Pipelines:
    """Training and evaluation pipelines on PIL images for a resolved ``policy``.

    Training: crop_flip is (a resize to size x size when ``resize``) + random crop with padding + flip;
    resized_crop_flip is RandomResizedCrop + flip; none is the evaluation pipeline. Evaluation follows the dataset,
    not the training policy: ``eval_geometry`` crop_flip evaluates the (resized) image, resized_crop_flip a resize to
    size*256/224 and a centre crop (ImageNet).
    """
    to_tensor = [T.ToTensor(), T.Normalize(*stats)]
    flip_step = [T.RandomHorizontalFlip()] if flip else []
    resize_step = [T.Resize((size, size))] if resize else []
    if eval_geometry == "resized_crop_flip":
        eval_tf = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), *to_tensor])
    else:
        eval_tf = T.Compose(resize_step + to_tensor)
    if policy == "none":
        return eval_tf, eval_tf
    if policy == "crop_flip":
        crop = [T.RandomCrop(size, padding=crop_padding(size))]
        return T.Compose(resize_step + crop + flip_step + to_tensor), eval_tf
    if policy == "resized_crop_flip":
        return T.Compose([T.RandomResizedCrop(size), *flip_step, *to_tensor]), eval_tf
    raise ValueError(f"unknown augmentation policy {policy!r}")


def crop_flip_pipelines(native_size: int, size: int, stats: Stats, augment: str, flip: bool = True) -> Pipelines:
    """Pipelines of a dataset of ``native_size`` px images (CIFAR, STL-10, Tiny ImageNet): crop_flip unless
    ``augment`` names another policy, evaluated on the image resized to ``size`` when it differs."""
    policy = "crop_flip" if augment == "auto" else augment
    return pil_pipelines(policy, size, stats, flip, resize=size != native_size, eval_geometry="crop_flip")


def resolve_flip(flip: str | bool, dataset_default: bool) -> bool:
    """``data.flip``: true/false, or ``auto`` for the dataset's own choice (off for digits, synthetic and small
    image folders, on otherwise)."""
    return dataset_default if flip == "auto" else bool(flip)


def normalisation(mean: list[float] | None, std: list[float] | None, default: Stats | Callable[[], Stats]) -> Stats:
    """``data.mean`` / ``data.std`` as RGB stats (one value serves all channels); the half not given comes from
    ``default`` (or its result)."""
    fallback = (default() if callable(default) else default) if mean is None or std is None else None

    def rgb(values: list[float] | None, index: int) -> tuple[float, ...]:
        if values is None:
            return tuple(fallback[index])
        return tuple(float(v) for v in (values * 3 if len(values) == 1 else values))

    return rgb(mean, 0), rgb(std, 1)


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
