"""Device-resident batches for in-memory datasets: the whole set on the device, crop/flip done there per batch.

Replaces the DataLoader for digits and synthetic data (``train.device_data``): no per-item Python, no collation,
no host-to-device copy per step. The epoch order is DistributedSampler's (seed + epoch, padded to a multiple of the
world size, strided by rank), so switching between the two changes which crops are drawn, never which images a
worker sees.

Augmentation draws come from a generator seeded by (seed, epoch, rank) alone (``stream_seed``), not from torch's
global RNG, which model initialisation consumes differently per architecture and head placement: so a worker's batches
are a pure function of the data config, seed, epoch and rank, the same in every trial of a sweep (which lets trials
share the frozen teacher's outputs, engine/teacher_cache.py) and after a resume.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator

import torch


def sampler_order(n: int, epoch: int, seed: int, rank: int, world_size: int, shuffle: bool = True) -> torch.Tensor:
    """The indices ``DistributedSampler(shuffle=shuffle, seed=seed, drop_last=False)`` gives ``rank`` in ``epoch``."""
    if shuffle:
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    total = math.ceil(n / world_size) * world_size
    if total > n:  # pad by repeating the start of the order, as DistributedSampler does
        order = torch.cat([order] * math.ceil(total / n))[:total]
    return order[rank:total:world_size]


def stream_seed(seed: int, epoch: int, rank: int) -> int:
    """The augmentation generator's seed for ``rank`` in ``epoch`` (a hash, so nearby triples do not correlate)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class DeviceBatches:
    """Batches of ``images`` / ``labels`` (moved to ``device`` once) in the sampler's order for ``rank``.

    ``augment`` (e.g. ``RandomCropFlip``; called as ``augment(x, generator=...)``) is applied to each whole batch on
    the device. Call ``set_epoch`` before
    each epoch, as with a DistributedSampler. ``drop_last`` drops an incomplete final batch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device, *,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size, self.augment, self.shuffle, self.seed = batch_size, augment, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def shard_size(self) -> int:
        return math.ceil(len(self.labels) / self.world_size)

    def __len__(self) -> int:
        full, rest = divmod(self.shard_size, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = sampler_order(len(self.labels), self.epoch, self.seed, self.rank, self.world_size, self.shuffle)
        order = order.to(self.images.device)
        generator = None
        if self.augment is not None:
            generator = torch.Generator(device=self.images.device)
            generator.manual_seed(stream_seed(self.seed, self.epoch, self.rank))
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[index]
            yield (self.augment(x, generator=generator) if self.augment is not None else x), self.labels[index]
