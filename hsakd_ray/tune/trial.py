"""The Tune trial function: build one trial's config and fit a Train V2 trainer for it (train/trainer.py).

Metrics reach Tune through ``TuneReportCallback``. The Train run is named after the trial, so a restarted trial
(Tuner.restore, a retry) resumes from its own Train checkpoint. PBT needs Tune-side checkpoints to hand a donor's
weights to another trial, so under PBT each persisted Train checkpoint is also reported to Tune, and a trial that
PBT restarts from a donor starts a new Train run from that checkpoint.
"""
from __future__ import annotations

import hashlib
import threading
from typing import Any

import ray
from ray import tune
from ray.train import Checkpoint, UserCallback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.queue import Empty, Queue

from .. import stamps
from ..train.trainer import build_trainer
from .resources import trial_resources
from .space import SearchSpace, trial_config


class _CheckpointForwarder(UserCallback):
    """PBT only: pass (metrics, persisted checkpoint path) from the Train controller to the trial function."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.queue.put((metrics[0], checkpoint.path if checkpoint else None))


def _fit_reporting_checkpoints(make_trainer) -> None:
    queue = Queue(actor_options={"num_cpus": 0})
    trainer = make_trainer([_CheckpointForwarder(queue)])
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # re-raised in the trial thread below
            failure.append(exc)

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    while thread.is_alive() or not queue.empty():
        try:
            metrics, path = queue.get(timeout=0.5)
        except Empty:
            continue
        tune.report(metrics, checkpoint=Checkpoint(path) if path else None)
    if failure:
        raise failure[0]


def restart_run_name(trial_id: str, donor_path: str) -> str:
    """The Train run of a trial restarted from a donor checkpoint: named by a digest of the donor's path, the same in
    every process (Python's ``hash`` of a str is salted per process, so a restored driver would not find it)."""
    return f"{trial_id}-from-{hashlib.sha256(donor_path.encode()).hexdigest()[:10]}"


def run_trial(config: dict[str, Any], space: SearchSpace, teacher_files: dict[str, bytes] | None,
              train_storage: str, teacher_store: dict | None = None, kept: str | None | bool = True) -> None:
    """One trial: its config from the sampled ``params``, then a Train fit. ``kept``: the metric choosing its
    kept checkpoint, worked out by the sweep's driver (``True``: here, from the trial's config)."""
    ctx = tune.get_context()
    name = f"{ctx.get_trial_id()}"
    if stamps.enabled():
        stamps.set_label(name)
        stamps.stamp("trial_process", t=stamps.process_started())
        stamps.stamp("trial_fn")
    cfg = trial_config(space, config["params"], cross_checked=False)  # checked whole by the Train worker
    pbt = space.tune.scheduler.type == "pbt"
    donor = tune.get_checkpoint() if pbt else None
    start_from = donor.path if donor is not None else None
    if start_from is not None:
        name = restart_run_name(name, start_from)

    def make_trainer(callbacks: list) -> Any:
        return build_trainer(cfg, "distill", name, train_storage, callbacks, teacher_files, start_from=start_from,
                             teacher_store=teacher_store, kept=kept)

    stamps.stamp("trainer_fit")
    if pbt:
        _fit_reporting_checkpoints(make_trainer)
    else:
        make_trainer([TuneReportCallback()]).fit()


def default_concurrency(space: SearchSpace, resources: dict | None = None) -> int:
    """How many trials the cluster fits at once: its CPUs over one trial's driver plus worker group (and its GPUs
    over the group's). Tune reserves only the driver, so admitting more would leave a worker group waiting for
    another trial's CPUs until its start-up timeout."""
    resources = ray.cluster_resources() if resources is None else resources
    r = space.tune.resources
    per_trial = r.num_workers * r.cpus_per_worker + trial_resources(space)["cpu"]
    fits = int((resources.get("CPU", 1) + 1e-9) // per_trial)
    if r.gpus_per_worker:
        fits = min(fits, int(resources.get("GPU", 0) // (r.num_workers * r.gpus_per_worker)))
    return max(1, fits)
