"""One training job from config to final metrics, in plain PyTorch.

``run_job`` is what both the local CLI and each Ray Train worker call; a ``Runtime`` carries what differs between
them (device, rank, DDP wrapping, how an epoch's metrics and checkpoint are reported, the state to resume from).
"""
from __future__ import annotations

import itertools
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..config import Config, dump_config
from ..data import DataBundle, as_tensors, build_datasets, is_in_memory, tensor_augmentation
from ..errors import ConfigError, TrainingDiverged
from .batches import DeviceBatches, stream_seed
from .checkpoint import write_checkpoint
from .compiling import compile_or_eager, resolve_compile
from .loop import evaluate, train_epoch
from .optim import build_lr_scheduler, build_optimizer
from .precision import Choice, autocast_dtype, cpu_flags, resolve_precision
from .tasks import Task, build_task
from .teacher_cache import build_provider, widen_teacher
from .threads import chunk_rows, configure_threads, teacher_split

# report(epoch, metrics, save) -- ``save(path)`` writes the epoch's checkpoint directory when the reporter wants one.
Reporter = Callable[[int, dict, Callable[[str | Path], Path]], None]


@dataclass
class Runtime:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    wrap: Callable[[nn.Module], nn.Module] = lambda m: m
    report: Reporter | None = None
    resume_state: dict | None = None  # a checkpoint's ``load_train_state``: train state plus its model states
    log: Callable[[str], None] = field(default=lambda line: print(line, flush=True))  # rank 0's job-level lines
    teacher_store: dict | None = None  # a sweep's shared teacher outputs (teacher_cache.StoreSettings fields)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def adopt_base_lr(optimizer: torch.optim.Optimizer, scheduler, lr: float) -> None:
    """After loading a checkpoint, use this config's base lr (PBT may have mutated it since the checkpoint)."""
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)


def per_worker_batch(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise ConfigError(f"train.batch_size {global_batch} is not divisible by scaling.num_workers {world_size}")
    return global_batch // world_size


def make_loaders(train: Dataset, eval_set: Dataset, cfg: Config, rt: Runtime) -> tuple[DataLoader, DataLoader]:
    """Training: a seeded DistributedSampler (epoch-reproducible, so resuming needs no sampler state).
    Evaluation: a strided shard per worker, no padding, so every sample counts exactly once."""
    batch = per_worker_batch(cfg.train.batch_size, rt.world_size)
    sampler = DistributedSampler(train, num_replicas=rt.world_size, rank=rt.rank, shuffle=True,
                                 seed=cfg.train.seed)
    pin = rt.device.type == "cuda"
    workers = cfg.data.loader_workers
    train_loader = DataLoader(train, batch_size=batch, sampler=sampler, num_workers=workers, pin_memory=pin,
                              drop_last=len(sampler) >= 2 * batch, persistent_workers=workers > 0)
    shard = Subset(eval_set, range(rt.rank, len(eval_set), rt.world_size))
    eval_loader = DataLoader(shard, batch_size=max(batch, 64), shuffle=False, num_workers=workers, pin_memory=pin)
    return train_loader, eval_loader


def make_batches(data: DataBundle, cfg: Config, rt: Runtime) -> tuple[DeviceBatches | DataLoader, ...]:
    """Training and evaluation batches: device-resident for in-memory datasets when ``train.device_data`` is on
    (same epoch order and shards as ``make_loaders``), else the DataLoaders."""
    if not (cfg.train.device_data and is_in_memory(data.train) and is_in_memory(data.eval)):
        return make_loaders(data.train, data.eval, cfg, rt)
    batch = per_worker_batch(cfg.train.batch_size, rt.world_size)
    images, labels = as_tensors(data.train)
    shard = -(-len(labels) // rt.world_size)
    train = DeviceBatches(images, labels, batch, rt.device, augment=tensor_augmentation(data.train),
                          seed=cfg.train.seed, rank=rt.rank, world_size=rt.world_size, drop_last=shard >= 2 * batch)
    images, labels = as_tensors(data.eval)
    eval_batches = DeviceBatches(images[rt.rank::rt.world_size], labels[rt.rank::rt.world_size], max(batch, 64),
                                 rt.device, shuffle=False)
    return train, eval_batches


def set_epoch(batches: DeviceBatches | DataLoader, epoch: int) -> None:
    (batches if isinstance(batches, DeviceBatches) else batches.sampler).set_epoch(epoch)


def checkpoint_meta(kind: str, cfg: Config, task: Task, epoch: int, metrics: dict) -> dict:
    net = task.network
    return {"kind": kind, "method": cfg.distill.method if kind == "distill" else None, "arch": net.arch,
            "num_classes": net.num_classes, "aux_stages": list(net.aux_stages), "epoch": epoch,
            "metrics": metrics, "dataset": cfg.data.name}


@dataclass
class StepSetup:
    """How ``train_epoch`` runs a task's steps: its optimizer and the fast path resolved once for the job's device
    (``train.precision`` becomes ``precision``, a ``Choice``; ``train.compile`` becomes ``compile``), applied around
    the steps (engine/loop.py)."""

    optimizer: torch.optim.SGD
    channels_last: bool
    overlap: tuple[int, int] | None  # (teacher, student) intra-op threads when the teacher runs a batch ahead
    chunk_rows: int                  # rows per eval-mode forward (0: whole batches)
    precision: Choice = Choice("fp32", "")
    compile: Choice = Choice("eager", "")

    @property
    def autocast(self) -> torch.dtype | None:
        """The forwards' autocast dtype: bf16, or None (fp32)."""
        return autocast_dtype(self.precision.value)

    def describe(self) -> str:
        """One log line: what was chosen and why."""
        return (f"precision {self.precision.value} ({self.precision.reason}); "
                f"compile {self.compile.value} ({self.compile.reason})")


def setup_step(task: Task, cfg: Config, device: torch.device, image_size: int, steps: int = 0,
               warn: Callable[[str], None] = warnings.warn) -> StepSetup:
    """Move the task's networks to ``device`` and apply the fast path of ``cfg.train``: memory format, CPU threads,
    teacher overlap, ``torch.compile`` (``steps``: the job's training steps, for ``compile=auto``), fused SGD,
    precision (bf16 autocast or fp32), CPU forward chunks."""
    fast = cfg.train
    teacher = getattr(task, "teacher", None)
    networks = [m for m in [*task.trainable_modules(), teacher] if m is not None]
    for module in networks:
        module.to(device, memory_format=torch.channels_last if fast.channels_last else torch.preserve_format)
    threads = configure_threads(fast.threads, device)
    overlap = None
    if teacher is not None and fast.teacher_overlap and device.type == "cpu":
        overlap = teacher_split(teacher, task.network, image_size, threads)
    compiled = resolve_compile(fast.compile, fast.compile_mode, device.type, steps)
    if compiled.value != "eager":
        mode = compile_or_eager(networks, compiled.value, warn)
        if mode == "eager":
            compiled = Choice("eager", f"{compiled.reason}, but compiling failed")
    params = itertools.chain.from_iterable(m.parameters() for m in task.trainable_modules())
    optimizer = build_optimizer(params, cfg.optim, fused=fast.fused_optimizer or None)
    precision = resolve_precision(fast.precision, device.type, cpu_flags() if device.type == "cpu" else frozenset())
    return StepSetup(optimizer, fast.channels_last, overlap, chunk_rows(fast.cpu_chunk_rows, device), precision,
                     compiled)


def check_finite_losses(metrics: dict, epoch: int) -> None:
    """Stop at the first epoch whose mean loss (any part) is NaN or infinite: no later epoch can recover, so the job
    fails at once instead of training on. Every worker sees the same all-reduced means, so all stop together."""
    bad = {k: v for k, v in metrics.items() if k.startswith("train/") and not math.isfinite(v)}
    if bad:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(bad.items()))
        raise TrainingDiverged(f"loss diverged at epoch {epoch} ({parts}): lower optim.lr or check the data")


def run_job(cfg: Config, kind: str, rt: Runtime | None = None) -> dict:
    """Train a ``teacher``, ``distill`` or ``probe`` job for ``cfg.train.epochs``; returns the last epoch's metrics."""
    rt = rt or Runtime(device=resolve_device(cfg.train.device))
    seed_everything(cfg.train.seed)
    data = build_datasets(cfg.data)
    task = build_task(kind, cfg, data.num_classes)
    heads = widen_teacher(rt.teacher_store, task, cfg)  # sharing: one stream for every head placement
    train_loader, eval_loader = make_batches(data, cfg, rt)
    start_epoch = int(rt.resume_state["epoch"]) if rt.resume_state is not None else 0
    steps = (cfg.train.epochs - start_epoch) * len(train_loader)
    setup = setup_step(task, cfg, rt.device, data.image_size, steps)
    if rt.rank == 0:
        rt.log(f"{kind} job: {setup.describe()}")
    optimizer, fast, autocast = setup.optimizer, setup.channels_last, setup.autocast
    scheduler = build_lr_scheduler(optimizer, cfg.optim, cfg.train.epochs)
    if rt.resume_state is not None:
        state = rt.resume_state
        task.load_state_dicts(state["models"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        adopt_base_lr(optimizer, scheduler, cfg.optim.lr)
        set_rng_state(state["rng"])
    task.wrap(rt.wrap)
    provider = build_provider(rt.teacher_store, task, cfg, rt.rank, rt.world_size, rt.device, autocast, heads,
                              setup.compile.value)
    if provider is not None:
        task.share_teacher(provider)  # the teacher outputs the steps get: shared by the sweep's trials
        setup.overlap = None  # most batches are a file read: a look-ahead thread would only take the student's cores
    config_yaml = dump_config(cfg)
    metrics: dict = {}
    cycle_start = time.perf_counter()
    for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
        set_epoch(train_loader, epoch)
        if not isinstance(train_loader, DeviceBatches):  # host-side crop/flip draw from the global RNG: seed it
            torch.manual_seed(stream_seed(cfg.train.seed, epoch, rt.rank))  # so batches do not depend on model init
        lr = optimizer.param_groups[0]["lr"]
        if provider is not None:
            provider.start_epoch(epoch)
        metrics = train_epoch(task, optimizer, train_loader, rt.device, fast, autocast, setup.overlap)
        check_finite_losses(metrics, epoch)
        if provider is not None:
            metrics.update(provider.epoch_metrics())
        scheduler.step()
        for prefix, net in task.networks_to_evaluate().items():
            for k, v in evaluate(net, eval_loader, rt.device, fast, autocast, setup.chunk_rows).items():
                metrics[f"{prefix}{data.eval_split}/{k}"] = v
        now = time.perf_counter()
        # all-in seconds per epoch: training, evaluation, and the previous epoch's report and checkpoint
        metrics.update(epoch=epoch, lr=lr, epoch_total_time=now - cycle_start, precision=setup.precision.value,
                       compile=setup.compile.value)
        cycle_start = now

        def save(path: str | Path, epoch: int = epoch, metrics: dict = dict(metrics)) -> Path:  # noqa: B006
            states = task.state_dicts()  # written once, as model.pt (peer.pt ...); train_state.pt names the files
            train_state = {"epoch": epoch, "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "rng": rng_state(), "model_files": list(states)}
            extra = {k: v for k, v in states.items() if k != "model"}
            return write_checkpoint(path, model_state=states["model"], extra=extra, config_yaml=config_yaml,
                                    meta=checkpoint_meta(kind, cfg, task, epoch, metrics), train_state=train_state)

        if rt.report is not None:
            rt.report(epoch, metrics, save)
    return metrics
