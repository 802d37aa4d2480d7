"""The Tune trial function: build one trial's config and fit a Train V2 trainer for it (train/trainer.py).

Metrics reach Tune through ``TuneReportCallback``. The Train run is named after the trial, so a restarted trial
(Tuner.restore, a retry) resumes from its own Train checkpoint. PBT needs Tune-side checkpoints to hand a donor's
weights to another trial, so under PBT each persisted Train checkpoint is also reported to Tune, and a trial that
PBT restarts from a donor starts a new Train run from that checkpoint.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.train import Checkpoint, UserCallback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.queue import Queue

from .. import errors
from ..train.failfast import fit_or_user_error
from ..train.job_spec import Job
from ..train.threaded_fit import fit_in_thread
from ..train.trainer import build_trainer
from .resources import trial_resources
from .space import SearchSpace, trial_config


class _CheckpointForwarder(UserCallback):
    """PBT only: pass (metrics, persisted checkpoint path) from the Train controller to the trial function."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.queue.put((metrics[0], checkpoint.path if checkpoint else None))


def report_to_tune(item: tuple[dict, str | None]) -> None:
    metrics, path = item
    tune.report(metrics, checkpoint=Checkpoint(path) if path else None)


def restart_run_name(trial_id: str, donor_path: str) -> str:
    """The Train run of a trial restarted from a donor checkpoint: named by a digest of the donor's path, the same in
    every process (Python's ``hash`` of a str is salted per process, so a restored driver would not find it)."""
    return f"{trial_id}-from-{hashlib.sha256(donor_path.encode()).hexdigest()[:10]}"


FINAL_ERROR_FILE = "hsakd-final-error.json"  # in a trial's directory: the UserError that ended its Train run


def fail_as_before(trial_dir: str, sweep_attempt: str | None) -> None:
    """Tune retries a failed trial (``FailureConfig.max_failures``) with no way to exempt an error; a trial whose
    Train run ended with a ``UserError`` (a data error, a diverged loss: the same again on every try) fails again at
    once, in this sweep command, instead of starting a worker group to meet it again. ``--resume`` (another
    ``sweep_attempt``) tries it afresh, e.g. after the data was fixed."""
    marker = Path(trial_dir) / FINAL_ERROR_FILE
    if sweep_attempt is None or not marker.is_file():
        return
    seen = json.loads(marker.read_text())
    if seen.get("attempt") == sweep_attempt:
        kind = getattr(errors, seen.get("type", ""), None)
        raise (kind if isinstance(kind, type) and issubclass(kind, errors.UserError) else errors.UserError)(
            seen["message"])


def remember_failure(trial_dir: str, sweep_attempt: str | None, error: errors.UserError) -> None:
    if sweep_attempt is not None:
        Path(trial_dir, FINAL_ERROR_FILE).write_text(json.dumps(
            {"attempt": sweep_attempt, "type": type(error).__name__, "message": str(error)}))


def run_trial(config: dict[str, Any], space: SearchSpace, teacher_files: dict[str, bytes] | None,
              train_storage: str, teacher_store: dict | None = None, sweep_attempt: str | None = None) -> None:
    """One trial: its config from the sampled ``params``, then a Train fit named after the trial. A worker's
    ``UserError`` fails the trial as itself, once (``fail_as_before``)."""
    trial_dir = tune.get_context().get_trial_dir()
    fail_as_before(trial_dir, sweep_attempt)
    try:
        fit_trial(config, space, teacher_files, train_storage, teacher_store)
    except errors.UserError as error:
        remember_failure(trial_dir, sweep_attempt, error)
        raise


def fit_trial(config: dict[str, Any], space: SearchSpace, teacher_files: dict[str, bytes] | None,
              train_storage: str, teacher_store: dict | None) -> None:
    name = tune.get_context().get_trial_id()
    cfg = trial_config(space, config["params"], cross_checked=False)  # checked whole by the Train worker
    pbt = space.tune.scheduler.type == "pbt"
    donor = tune.get_checkpoint() if pbt else None
    start_from = donor.path if donor is not None else None
    if start_from is not None:
        name = restart_run_name(name, start_from)
    job = Job(cfg, "distill", name, train_storage, teacher_files=teacher_files, teacher_store=teacher_store,
              start_from=start_from)
    if not pbt:
        fit_or_user_error(build_trainer(job, [TuneReportCallback()]).fit)
        return
    queue = Queue(actor_options={"num_cpus": 0})
    try:
        fit_in_thread(build_trainer(job, [_CheckpointForwarder(queue)]), queue, report_to_tune)
    finally:
        queue.shutdown()


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
