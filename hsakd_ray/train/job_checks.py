"""Checks a job passes before anything starts (no Ray, no MLflow run, nothing written): what the job kind needs,
its data, its paths, its checkpoint references and, for a local Ray, the resources this machine has.

Each refusal is a one-line UserError naming the key or path and what is allowed, in seconds rather than after Ray,
a worker group and an epoch have started."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from ..config import Config
from ..data.checks import check_data
from ..distill.methods import method_spec
from ..engine.runner import per_worker_batch, resolve_device
from ..engine.tasks import require_inputs
from ..errors import ClusterError, ConfigError
from ..tracking.references import check_reference, is_mlflow_reference
from ..tracking.store import check_tracking_uri
from ..writable import unwritable_reason


def checkpoint_references(cfg: Config, kind: str) -> dict[str, str]:
    """The checkpoints a job starts from, by config key."""
    refs = {}
    if kind == "distill" and method_spec(cfg.distill.method).needs_teacher and cfg.teacher.checkpoint:
        refs["teacher.checkpoint"] = cfg.teacher.checkpoint
    if kind == "probe" and cfg.student.checkpoint:
        refs["student.checkpoint"] = cfg.student.checkpoint
    return refs


def check_job(cfg: Config, kind: str, *, local: bool, tracking_uri: str | None = None) -> None:
    """Everything about a job that can be refused before it starts. ``local``: the in-process ``--local`` run,
    which writes under ``train.output_dir`` and reads checkpoints from directories only."""
    require_inputs(kind, cfg)
    if local:
        resolve_device(cfg.train.device)
    else:
        per_worker_batch(cfg.train.batch_size, cfg.scaling.num_workers)
    for key, ref in checkpoint_references(cfg, kind).items():
        if local and is_mlflow_reference(ref):
            raise ConfigError(f"{key} {ref!r}: --local reads checkpoint directories only; run without --local to "
                              "fetch runs:/ and models:/ references from the tracking store")
        check_reference(ref, tracking_uri or "")
    check_data(cfg.data, cfg.train.batch_size)
    if local:
        reason = unwritable_reason(Path(cfg.train.output_dir))
        if reason:
            raise ConfigError(f"train.output_dir {cfg.train.output_dir!r} cannot be written: {reason}; "
                              "set train.output_dir to a writable directory")


# ---------------------------------------------------------------- Ray, before it starts

def is_remote_storage(path: str) -> bool:
    return urlparse(path).scheme not in ("", "file")


def resolve_storage_path(path: str) -> str:
    return path if is_remote_storage(path) else str(Path(path).expanduser().resolve())


def check_storage_path(storage_path: str) -> None:
    """A local ``ray.storage_path`` must be creatable and writable (probed without creating it)."""
    if is_remote_storage(storage_path):
        return
    reason = unwritable_reason(storage_path)
    if reason:
        raise ConfigError(f"ray.storage_path {storage_path!r} cannot be written: {reason}; "
                          "set ray.storage_path to a writable directory (or s3://, gs:// on a cluster)")


def joins_cluster(address: str | None) -> bool:
    """True when ``ray.init`` will join a running cluster (``address`` or ``RAY_ADDRESS``), not start one here."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def worker_group_need(num_workers: int, cpus_per_worker: float, gpus_per_worker: float) -> dict[str, float]:
    """What one worker asks Ray for (the Train controller takes no CPU)."""
    need = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        need["GPU"] = gpus_per_worker
    return need


def cpu_count() -> float:
    """The CPUs a local Ray will offer: this process's CPU affinity, capped by a cgroup (v2) quota as Ray caps it."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return float(count)


def local_capacity() -> dict[str, float]:
    """What ``ray.init()`` will find on this machine: CPUs and CUDA GPUs."""
    import torch

    return {"CPU": cpu_count(), "GPU": float(torch.cuda.device_count() if torch.cuda.is_available() else 0)}


def _amount(n: float, what: str) -> str:
    return f"{n:g} {what}" + ("" if n == 1 else "s")


def shortfall(per_worker: dict[str, float], num_workers: int, extra_cpu: float, total: dict[str, float],
              node_max: dict[str, float] | None) -> str | None:
    """What ``num_workers`` workers of ``per_worker`` (plus ``extra_cpu``) lack in ``total`` (and, per worker, in
    the largest node ``node_max``), as a phrase with a ``{where}`` slot; None when they fit."""
    for resource, amount in per_worker.items():
        extra = extra_cpu if resource == "CPU" else 0.0
        have = total.get(resource, 0.0)
        if amount * num_workers + extra > have + 1e-9:
            driver = f" + {extra:g} for the trial driver" if extra else ""
            return (f"{_amount(amount * num_workers, resource)} ({_amount(num_workers, 'worker')} x {amount:g})"
                    f"{driver} but {{where}} has {have:g}")
        if node_max is not None and amount > node_max.get(resource, 0.0) + 1e-9:
            return (f"{_amount(amount, resource)} on one node for each worker but {{where}}'s largest node has "
                    f"{node_max.get(resource, 0.0):g}")
    return None


def check_local_resources(per_worker: dict[str, float], num_workers: int, what: str, address: str | None,
                          extra_cpu: float = 0.0) -> None:
    """Before a local Ray starts: refuse resources this machine can never give ``what`` (a job, a trial); they
    would wait for a worker group forever. A cluster to join is checked once joined (ray_session)."""
    ray = sys.modules.get("ray")
    if joins_cluster(address) or (ray is not None and ray.is_initialized()):
        return
    problem = shortfall(per_worker, num_workers, extra_cpu, local_capacity(), None)
    if problem:
        raise ClusterError(f"{what} needs {problem.format(where='this machine')}: lower scaling.num_workers / "
                           "cpus_per_worker / gpus_per_worker, or set use_gpu: false, or join a cluster "
                           "with --address")


def check_run_directory(storage: str, name: str, resume: bool) -> None:
    """A new run must not reuse an existing run's name; ``--resume`` needs one."""
    if is_remote_storage(storage):
        return
    exists = (Path(storage) / name).exists()
    if exists and not resume:
        raise ConfigError(f"a run named {name!r} already exists in {storage}: pass --resume to continue it, "
                          "or set tracking.run_name to a new name")
    if resume and not exists:
        raise ConfigError(f"--resume: no run named {name!r} in {storage} (set tracking.run_name to its name)")


def check_ray_job(cfg: Config, kind: str, name: str, tracking_uri: str, storage: str, resume: bool,
                  address: str | None) -> None:
    """Every check of a Ray job that needs neither Ray nor an MLflow run, cheapest first."""
    check_tracking_uri(tracking_uri)
    check_job(cfg, kind, local=False, tracking_uri=tracking_uri)
    check_storage_path(storage)
    check_run_directory(storage, name, resume)
    check_local_resources(job_need(cfg), cfg.scaling.num_workers, job_description(cfg, kind), address)


def job_need(cfg: Config) -> dict[str, float]:
    """What each of a job's workers asks Ray for, from ``scaling`` (as trainer.scaling_config asks it)."""
    s = cfg.scaling
    return worker_group_need(s.num_workers, s.cpus_per_worker, s.gpus_per_worker if s.use_gpu else 0.0)


def job_description(cfg: Config, kind: str) -> str:
    return f"scaling: the {kind} job"
