"""A Train job on CUDA GPUs: Ray's ``TorchTrainer`` with ``use_gpu`` sets up an NCCL process group, each worker on
its own GPU, and the job trains to a FINISHED MLflow run. Skipped without a CUDA GPU (``benchmarks/gpu_checks.sh``
runs it on a lent GPU machine). Self-contained: no conftest fixtures, its own local Ray."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def gpu_config(tmp_path: Path, workers: int) -> dict:
    return {
        "data": {"name": "synthetic", "image_size": 16, "synthetic_train_size": 256, "synthetic_test_size": 64,
                 "synthetic_classes": 10},
        "teacher": {"arch": "resnet8", "aux_stages": "all"},
        "optim": {"lr": 0.05, "schedule": "cosine", "milestones": []},
        "train": {"epochs": 2, "batch_size": 32, "seed": 0, "output_dir": str(tmp_path / "outputs")},
        "scaling": {"num_workers": workers, "cpus_per_worker": 1, "use_gpu": True, "gpus_per_worker": 1},
        "ray": {"storage_path": str(tmp_path / "ray_results"), "max_failures": 0},
        "tracking": {"experiment": "gpu", "run_name": "gpu-teacher"},
    }


def test_a_gpu_job_trains_in_an_nccl_group_one_gpu_per_worker(tmp_path, monkeypatch):
    import ray
    from mlflow.tracking import MlflowClient

    from hsakd_ray.config import config_from_dict
    from hsakd_ray.train import worker
    from hsakd_ray.train.job import run_ray_job
    from hsakd_ray.train.job_spec import Job
    from hsakd_ray.train.trainer import build_trainer

    workers = min(2, torch.cuda.device_count())
    monkeypatch.chdir(tmp_path)
    ray.init(num_cpus=workers + 1, num_gpus=workers)
    try:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        result = run_ray_job(config_from_dict(gpu_config(tmp_path, workers)), "teacher", tracking_uri=uri)
        run = MlflowClient(uri).get_run(result["run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test/top1_last"] >= 0

        out = str(tmp_path)

        def what_each_worker_sees(config: dict) -> None:
            import torch.distributed as dist

            rank = ray.train.get_context().get_world_rank()
            Path(out, f"rank{rank}.json").write_text(json.dumps({
                "backend": dist.get_backend(), "device": str(ray.train.torch.get_device()),
                "current": torch.cuda.current_device(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}))

        monkeypatch.setattr(worker, "train_loop_per_worker", what_each_worker_sees)
        cfg = config_from_dict(gpu_config(tmp_path, workers))
        build_trainer(Job(cfg, "teacher", "nccl-probe", str(tmp_path / "ray_results"))).fit()
        seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(workers)]
        assert {s["backend"] for s in seen} == {"nccl"}, seen
        assert all(s["device"].startswith("cuda") for s in seen), seen
        assert len({s["device"] for s in seen}) == workers or len({s["visible"] for s in seen}) == workers, seen
    finally:
        ray.shutdown()
