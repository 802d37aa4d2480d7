"""Build the TorchTrainer for a job from the config's ``scaling`` and ``ray`` sections."""
from __future__ import annotations

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ..config import Config, config_to_dict
from .worker import train_loop_per_worker


def score_attribute(cfg: Config) -> str:
    """The metric that ranks checkpoints and trials: top-1 on the eval split (val when carved, else test)."""
    return f"{'val' if cfg.data.val_fraction > 0 else 'test'}/top1"


def scaling_config(cfg: Config) -> ScalingConfig:
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    return ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources)


def build_trainer(cfg: Config, kind: str, name: str, storage_path: str, callbacks: list | None = None,
                  teacher_files: dict[str, bytes] | None = None, start_from: str | None = None) -> TorchTrainer:
    """One job = one TorchTrainer named ``name`` under ``storage_path`` (same name again resumes it).

    ``start_from``: a checkpoint directory (local or storage URI) the run starts from when it has no checkpoint of its
    own, e.g. a PBT donor's (Train V2 refuses ``resume_from_checkpoint``: the worker loads it, see worker.py)."""
    run_config = RunConfig(
        name=name,
        storage_path=storage_path,
        failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=score_attribute(cfg),
                                           checkpoint_score_order="max"),
        callbacks=callbacks or [],
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": config_to_dict(cfg), "kind": kind, "teacher_files": teacher_files,
                           "start_from": start_from},
        scaling_config=scaling_config(cfg),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        run_config=run_config,
    )


def read_checkpoint_files(path: str) -> dict[str, bytes]:
    """A checkpoint directory's files, to ship to workers on any node through the object store."""
    from pathlib import Path

    return {p.name: p.read_bytes() for p in Path(path).iterdir() if p.is_file() and p.name != "train_state.pt"}
