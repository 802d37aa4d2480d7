"""The function every Ray Train worker runs: resume from Train's checkpoint, then the plain-PyTorch job."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import ray.train
import ray.train.torch
import torch

from ..config import config_from_dict
from ..engine import Runtime, load_train_state, run_job
from ..engine.reporting import format_epoch
from ..tracking.epoch_logger import read_reported_epochs, write_reported_epochs
from .compute import ComputeMeter

# Not print(): Train V2 patches print in workers to log *and* (because Ray's workers replace sys.stdout) to echo
# the line, so every printed line reached the driver twice. Train routes this logger to the console once.
logger = logging.getLogger("hsakd_ray.worker")


def materialise_teacher(files: dict[str, bytes] | None, root: str) -> str | None:
    """Write the teacher checkpoint shipped through the object store into the worker-local directory ``root``."""
    if not files:
        return None
    for name, blob in files.items():
        (Path(root) / name).write_bytes(blob)
    return root


def worker_threads(cpus_per_worker: float) -> int:
    """Intra-op threads of a CPU worker: its CPUs, rounded (0.95 CPU, a core less a trial driver's share, is 1
    thread; 1.95 is 2), at least 1."""
    return max(1, round(cpus_per_worker))


def train_loop_per_worker(config: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="hsakd-teacher-") as scratch:  # removed when the worker's job ends
        _train_worker(config, scratch)


def _train_worker(config: dict, scratch: str) -> None:
    cfg = config_from_dict(config["cfg"])
    kind = config["kind"]
    teacher_dir = materialise_teacher(config.get("teacher_files"), scratch)
    if teacher_dir:  # the network the job starts from: the teacher of a distill job, the probed net of a probe
        getattr(cfg, "student" if kind == "probe" else "teacher").checkpoint = teacher_dir
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(worker_threads(cfg.scaling.cpus_per_worker))

    resume_state = None
    compute = ComputeMeter(cfg.scaling.gpus_per_worker if cfg.scaling.use_gpu else 0.0, world, device)
    # every epoch this run has reported, carried whole by each checkpoint (tracking/epoch_logger.py, backfill_epochs)
    reported: list[dict] = []
    checkpoint = own = ray.train.get_checkpoint()  # this run's own, after a worker-group restart or --resume
    if checkpoint is None and config.get("start_from"):
        checkpoint = ray.train.Checkpoint(config["start_from"])  # another run's: a PBT donor
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            resume_state = load_train_state(ckpt_dir)  # train state and model weights, in memory
            compute.resume_from(ckpt_dir)
            if own is not None:  # a donor's epochs are the donor's run's, not this one's
                reported = read_reported_epochs(ckpt_dir)
        if rank == 0 and resume_state is not None:
            logger.info("resuming after epoch %d from %s", int(resume_state["epoch"]), checkpoint.path)

    every, total = cfg.train.checkpoint_every, cfg.train.epochs
    # where this worker runs, reported with its metrics so a Tune trial's MLflow run is tagged with its node
    node = {"worker_node_ip": ray.util.get_node_ip_address(), "worker_node_id": ray.get_runtime_context().get_node_id()}

    def report(epoch: int, metrics: dict, save) -> None:
        nonlocal reported
        metrics = {**metrics, **node, **compute.totals(metrics)}
        if rank == 0:
            logger.info(format_epoch(epoch, total, metrics))
        # epochs after this one were re-run from the checkpoint resumed (a worker failure before a later checkpoint)
        reported = [m for m in reported if int(m["epoch"]) < epoch] + [metrics]
        if epoch % every and epoch != total:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                path = save(Path(tmp) / "checkpoint")
                write_reported_epochs(path, reported)
                ckpt = ray.train.Checkpoint.from_directory(str(path))
            ray.train.report(metrics, checkpoint=ckpt)

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(module, move_to_device=False)

    run_job(cfg, kind, Runtime(device=device, rank=rank, world_size=world, wrap=wrap, report=report,
                               resume_state=resume_state, log=logger.info,
                               teacher_store=config.get("teacher_store")))
