"""One Train job as Ray's ``TorchTrainer``, built the way Ray's docs show: Ray's torch backend sets up the process
group (gloo on CPUs, NCCL on CUDA GPUs); ``worker.train_loop_per_worker`` is what every worker runs."""
from __future__ import annotations

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ..config import Config, config_to_dict
from .failfast import StopOnUserError
from .job_spec import Job

# Worker groups that fail to start (a placement group not granted within Ray's startup timeout,
# RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s by default) are retried this many times, then the job fails with
# Ray's message: never a wait without end (Ray's default is to retry forever).
STARTUP_RETRIES = 4


def checkpoint_config(cfg: Config, kind: str) -> CheckpointConfig:
    """One checkpoint kept besides the latest: the best by the job's kept metric when it names a validation metric;
    else only the latest (the last epoch), so the test set never chooses a checkpoint."""
    from ..engine.selection import kept_metric  # loads the data registry: only when a trainer is built

    metric = kept_metric(cfg, kind)
    if metric is None:
        return CheckpointConfig(num_to_keep=1)
    return CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric, checkpoint_score_order="max")


def scaling_config(cfg: Config) -> ScalingConfig:
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    return ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources)


def build_trainer(job: Job, callbacks: list | None = None) -> TorchTrainer:
    """The job's ``TorchTrainer``; ``callbacks`` are Train ``UserCallback``s (progress, MLflow, Tune reporting)."""
    from .worker import train_loop_per_worker

    cfg = job.cfg
    run_config = RunConfig(
        name=job.name,
        storage_path=job.storage,
        failure_config=FailureConfig(max_failures=cfg.ray.max_failures, controller_failure_limit=STARTUP_RETRIES),
        checkpoint_config=checkpoint_config(cfg, job.kind),
        callbacks=[*(callbacks or []), StopOnUserError()],  # last: a UserError fails the run, never retried
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": config_to_dict(cfg), "kind": job.kind, "teacher_files": job.teacher_files,
                           "start_from": job.start_from, "teacher_store": job.teacher_store},
        scaling_config=scaling_config(cfg),
        run_config=run_config,
    )
