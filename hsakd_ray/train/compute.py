"""What a job's workers spent, reported with every epoch (``compute/*`` metrics): CPU-seconds of all Train worker
processes, GPU-seconds they held (GPUs per worker x workers x wall time), wall time and training images seen.

Totals run from the job's first epoch: on a restart or ``--resume`` they continue from the values the checkpoint
carries (its ``reported_epochs.json``), so a trial's totals include the attempts before the restart."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..engine.loop import all_reduce_sums
from ..tracking.epoch_logger import REPORTED_EPOCHS_FILE

CPU, GPU, WALL, IMAGES = "compute/cpu_seconds", "compute/gpu_seconds", "compute/wall_seconds", "compute/images_seen"
KEYS = (CPU, GPU, WALL, IMAGES)


class ComputeMeter:
    def __init__(self, gpus_per_worker: float, world_size: int, device: torch.device) -> None:
        self.gpus = gpus_per_worker * world_size
        self.device = device
        self.base = dict.fromkeys(KEYS, 0.0)
        self.cpu0, self.wall0 = time.process_time(), time.monotonic()
        self.images = 0.0

    def resume_from(self, checkpoint_dir: str | Path) -> None:
        """Continue from the totals of the last epoch the checkpoint made durable (none: from zero)."""
        file = Path(checkpoint_dir) / REPORTED_EPOCHS_FILE
        reported = json.loads(file.read_text()) if file.is_file() else []
        if reported:
            self.base = {k: float(reported[-1].get(k, 0.0)) for k in KEYS}

    def totals(self, metrics: dict) -> dict[str, float]:
        """The running totals after the epoch whose metrics are ``metrics``. Every worker calls this (a collective)."""
        self.images += round(metrics.get("images_per_sec", 0.0) * metrics.get("epoch_time", 0.0))
        cpu = all_reduce_sums({"cpu": torch.tensor(time.process_time() - self.cpu0, device=self.device)})["cpu"]
        wall = time.monotonic() - self.wall0
        return {CPU: self.base[CPU] + float(cpu), GPU: self.base[GPU] + self.gpus * wall,
                WALL: self.base[WALL] + wall, IMAGES: self.base[IMAGES] + self.images}
