"""Build the Train V2 trainer for a job from the config's ``scaling`` and ``ray`` sections: Ray's data-parallel
trainer with a torch process group (``backend.TorchGroupConfig``), built without importing torch."""
from __future__ import annotations

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from ..config import Config, config_to_dict
from .backend import TorchGroupConfig
from .failfast import StopOnUserError

try:  # Train V2's callback that gives every run a DatasetManager actor (see Trainer)
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
except ImportError:  # a Ray without it: nothing to leave out
    DatasetsCallback = None

# Imported lazily, so a Tune trial's process (which only builds the trainer) does not import the engine, the
# models and torchvision, seconds of a trial's start-up: the training code (.worker) where the train function runs,
# engine.selection where the kept metric is not given.


class Trainer(DataParallelTrainer):
    """What ``TorchTrainer`` is (a ``DataParallelTrainer`` whose workers share a torch process group), but with no
    torch import in the process that builds it or in Train's controller (backend.py), and no Ray Data
    ``DatasetManager`` actor when it is given no Ray Datasets.

    Train V2 starts that actor for every run, datasets or not: one more Ray process per job (and per trial) that
    imports Ray Data, about 1.2 CPU-seconds each that a trial's start-up competes for. hsakd-ray's workers load their
    data themselves, so a run here never has Ray Datasets and the actor has nothing to shard. With datasets (or a
    Ray whose Train has no such callback) its callbacks are Ray's, unchanged."""

    def _create_default_callbacks(self) -> list:
        callbacks = super()._create_default_callbacks()
        if self.datasets or DatasetsCallback is None:
            return callbacks
        return [cb for cb in callbacks if not isinstance(cb, DatasetsCallback)]


def train_loop_per_worker(config: dict) -> None:
    """What each Train worker runs (``worker.train_loop_per_worker``), importing the training code there."""
    from .worker import train_loop_per_worker as run

    run(config)


def checkpoint_config(cfg: Config, kind: str, metric: str | None | bool = True) -> CheckpointConfig:
    """One checkpoint kept besides the latest: the best by ``metric`` (``True``: ``kept_metric(cfg, kind)``) when it
    names a validation metric; else only the latest (the last epoch), so the test set never chooses a checkpoint."""
    if metric is True:
        from ..engine.selection import kept_metric

        metric = kept_metric(cfg, kind)
    if metric is None:
        return CheckpointConfig(num_to_keep=1)
    return CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric, checkpoint_score_order="max")


# Worker groups that fail to start (a placement group not granted within Ray's startup timeout,
# RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s by default) are retried this many times, then the job fails with
# Ray's message: never a wait without end (Ray's default is to retry forever).
STARTUP_RETRIES = 4


def scaling_config(cfg: Config) -> ScalingConfig:
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    return ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources)


def build_trainer(cfg: Config, kind: str, name: str, storage_path: str, callbacks: list | None = None,
                  teacher_files: dict[str, bytes] | None = None, start_from: str | None = None,
                  teacher_store: dict | None = None, kept: str | None | bool = True) -> Trainer:
    """One job = one Train V2 trainer named ``name`` under ``storage_path`` (same name again resumes it).

    ``start_from``: a checkpoint directory (local or storage URI) the run starts from when it has no checkpoint of its
    own, e.g. a PBT donor's (Train V2 refuses ``resume_from_checkpoint``: the worker loads it, see worker.py).
    ``teacher_store``: a sweep's shared teacher outputs (engine/teacher_cache.StoreSettings fields), or None.
    ``kept``: the metric that chooses the kept checkpoint when the caller knows it (``True``: from ``cfg``)."""
    run_config = RunConfig(
        name=name,
        storage_path=storage_path,
        failure_config=FailureConfig(max_failures=cfg.ray.max_failures, controller_failure_limit=STARTUP_RETRIES),
        checkpoint_config=checkpoint_config(cfg, kind, kept),
        callbacks=[*(callbacks or []), StopOnUserError()],  # last: a UserError fails the run, never retried
    )
    return Trainer(
        train_loop_per_worker,
        train_loop_config={"cfg": config_to_dict(cfg), "kind": kind, "teacher_files": teacher_files,
                           "start_from": start_from, "teacher_store": teacher_store},
        scaling_config=scaling_config(cfg),
        backend_config=TorchGroupConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        run_config=run_config,
    )


def read_checkpoint_files(path: str) -> dict[str, bytes]:
    """A checkpoint directory's files, to ship to workers on any node through the object store."""
    from pathlib import Path

    return {p.name: p.read_bytes() for p in Path(path).iterdir() if p.is_file() and p.name != "train_state.pt"}
