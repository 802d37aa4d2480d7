"""The driver path's pieces without a Ray cluster (the Ray tests run them for real, in the slow suite): the
``TorchTrainer`` a ``Job`` becomes, the kept checkpoint's metric, and the thread that runs ``fit``."""
from __future__ import annotations

import threading

import pytest
from ray.train import UserCallback
from ray.train.torch import TorchTrainer
from ray.util.queue import Empty

from hsakd_ray.config import config_from_dict
from hsakd_ray.train.failfast import StopOnUserError
from hsakd_ray.train.job_spec import Job
from hsakd_ray.train.threaded_fit import fit_in_thread
from hsakd_ray.train.trainer import STARTUP_RETRIES, build_trainer


def job(kind: str = "distill", **sections) -> Job:
    raw = {"data": {"name": "digits", "val_fraction": 0.1}, "scaling": {"num_workers": 3, "cpus_per_worker": 1.5},
           "ray": {"max_failures": 5}, **sections}
    return Job(config_from_dict(raw), kind, "the-run", "/tmp/storage", teacher_files={"model.pt": b"weights"},
               teacher_store={"root": "/tmp/store"}, start_from="/tmp/donor")


def test_a_job_is_rays_torch_trainer_named_and_stored_as_the_job():
    callback = UserCallback()
    trainer = build_trainer(job(), callbacks=[callback])
    assert type(trainer) is TorchTrainer  # Ray's own class, with Ray's torch backend
    run = trainer.run_config
    assert (run.name, run.storage_path) == ("the-run", "/tmp/storage")
    assert run.callbacks[:-1] == [callback] and type(run.callbacks[-1]) is StopOnUserError  # a data error: no retry
    assert run.failure_config.max_failures == 5
    assert run.failure_config.controller_failure_limit == STARTUP_RETRIES  # a worker group that cannot start fails


def test_the_workers_get_the_whole_job():
    j = job()
    config = build_trainer(j).train_loop_config
    assert config_from_dict(config["cfg"]) == j.cfg
    assert (config["kind"], config["teacher_files"], config["teacher_store"], config["start_from"]) == \
        ("distill", {"model.pt": b"weights"}, {"root": "/tmp/store"}, "/tmp/donor")


def test_scaling_asks_ray_for_each_workers_cpus_and_gpus():
    cpu = build_trainer(job()).scaling_config
    assert (cpu.num_workers, cpu.use_gpu, cpu.resources_per_worker) == (3, False, {"CPU": 1.5})
    gpu = build_trainer(job(scaling={"num_workers": 2, "use_gpu": True, "gpus_per_worker": 2})).scaling_config
    assert (gpu.num_workers, gpu.use_gpu, gpu.resources_per_worker) == (2, True, {"CPU": 1.0, "GPU": 2})


@pytest.mark.parametrize("kind, data, kept", [
    ("distill", {"name": "digits", "val_fraction": 0.1}, "val/top1"),   # a student keeps its best validation epoch
    ("distill", {"name": "digits", "val_fraction": 0.0}, None),         # never chosen on the test set: the last
    ("teacher", {"name": "digits", "val_fraction": 0.1}, None),         # a jointly trained teacher: the last
])
def test_the_kept_checkpoint_is_chosen_by_the_jobs_validation_metric_only(kind, data, kept):
    j = job(kind, data=data)
    assert j.kept_metric == kept
    checkpoints = build_trainer(j).run_config.checkpoint_config
    assert checkpoints.num_to_keep == 1 and checkpoints.checkpoint_score_attribute == kept
    if kept:
        assert checkpoints.checkpoint_score_order == "max"


class ListQueue:
    """What ``fit_in_thread`` reads of a ``ray.util.queue.Queue``: ``get(timeout)`` raising its ``Empty``, ``empty``."""

    def __init__(self) -> None:
        self.items: list = []
        self.lock = threading.Lock()

    def put(self, item) -> None:
        with self.lock:
            self.items.append(item)

    def get(self, timeout: float):
        with self.lock:
            if self.items:
                return self.items.pop(0)
        threading.Event().wait(min(timeout, 0.01))
        raise Empty

    def empty(self) -> bool:
        with self.lock:
            return not self.items


class Trainer:
    def __init__(self, queue: ListQueue | None, items: list, error: BaseException | None = None) -> None:
        self.queue, self.items, self.error = queue, items, error
        self.thread: threading.Thread | None = None

    def fit(self):
        self.thread = threading.current_thread()
        for item in self.items:
            self.queue.put(item)
        if self.error:
            raise self.error
        return "result"


def test_fit_runs_on_another_thread_and_every_item_is_forwarded_in_order_before_it_returns():
    queue, seen = ListQueue(), []
    trainer = Trainer(queue, list(range(50)))
    assert fit_in_thread(trainer, queue, seen.append) == "result"
    assert seen == list(range(50))
    assert trainer.thread is not threading.current_thread()


def test_fit_without_a_queue_returns_its_result():
    assert fit_in_thread(Trainer(ListQueue(), [])) == "result"


@pytest.mark.parametrize("error", [RuntimeError("worker failed"), KeyboardInterrupt()])
def test_what_fit_raises_is_raised_here_after_its_items(error):
    queue, seen = ListQueue(), []
    with pytest.raises(type(error)):
        fit_in_thread(Trainer(queue, ["epoch 1"], error), queue, seen.append)
    assert seen == ["epoch 1"]


def test_a_jobs_run_is_tagged_with_what_its_network_starts_from():
    from hsakd_ray.train.fit import teacher_source

    assert teacher_source(job("teacher")) == "scratch"
    assert teacher_source(job("teacher", teacher={"arch": "resnet18_imagenet", "pretrained": "torchvision"})) \
        == "torchvision"
    assert teacher_source(job("distill", teacher={"checkpoint": "runs:/abc/checkpoint"})) == "runs:/abc/checkpoint"
    assert teacher_source(job("distill", distill={"method": "ce"})) == "none"


def test_workers_get_a_checkpoints_weights_and_meta_but_not_its_train_state(tmp_path):
    from hsakd_ray.train.job_spec import read_checkpoint_files

    for name in ("model.pt", "meta.json", "train_state.pt"):
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / "a-folder").mkdir()
    assert read_checkpoint_files(tmp_path) == {"model.pt": b"model.pt", "meta.json": b"meta.json"}
