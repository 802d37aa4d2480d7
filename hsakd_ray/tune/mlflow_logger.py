"""A Tune callback, in the Tune driver (the one process that writes to MLflow during a sweep), that keeps exactly
one MLflow child run per trial: created on first start, found again by tag after a restart or ``--resume``,
one metric value per epoch, final status FINISHED, KILLED (tag ``stopped_by`` when the scheduler stopped it early)
or FAILED (tag ``error``)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from ..config import config_to_dict, flatten
from ..engine.teacher_cache import WARNING_KEY
from ..tracking import runs as R
from ..tracking.epoch_logger import FAST_PATH_TAGS, backfill_epochs
from .results import TrialOutcome, outcome_from_result
from .sharing import SharingTally, logged_sharing
from .space import SearchSpace, trial_config

EPOCH_SCALARS = ("lr", "images_per_sec", "epoch_time", "epoch_total_time")  # logged besides "split/name" keys

TRIAL_TAG = "hsakd.trial_id"
STORE_WARNING_TAG = "hsakd.teacher_store_warning"  # what the shared teacher store warned a trial's rank 0 about
# result key -> run tag: the node rank 0 ran on, and the precision / compile mode its fast path resolved to
NODE_TAGS = {"worker_node_id": "ray.node_id", "worker_node_ip": "ray.node_ip", **FAST_PATH_TAGS}


class MLflowTrialLogger(Callback):
    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, space: SearchSpace,
                 train_storage: str) -> None:
        self.tracking_uri, self.experiment_id, self.parent = tracking_uri, experiment_id, parent_run_id
        self.space, self.train_storage = space, train_storage
        self.run_ids: dict[str, str] = {}
        self.logged: dict[str, set[int]] = {}
        self.last_epoch: dict[str, int] = {}
        self.nodes: dict[str, dict[str, str]] = {}
        self.closed: set[str] = set()  # trials whose run has its final status
        self._client: MlflowClient | None = None
        self.sharing = SharingTally()  # teacher outputs each trial read from the sweep's store
        self.store_warnings: dict[str, list[str]] = {}  # trial id -> the store's warnings, each printed once

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def run_id(self, trial) -> str:
        if trial.trial_id in self.run_ids:
            return self.run_ids[trial.trial_id]
        filter_ = f"tags.`{TRIAL_TAG}` = '{trial.trial_id}' and tags.`{R.PARENT_TAG}` = '{self.parent}'"
        found = self.client.search_runs([self.experiment_id], filter_string=filter_, max_results=1)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            train_run = Path(self.train_storage) / trial.trial_id
            if train_run.is_dir():  # epochs its checkpoint made durable while the driver was down
                backfill_epochs(self.client, run_id, str(train_run))
            self.sharing.seed(trial.trial_id, logged_sharing(self.client, run_id))
        else:
            run_id = self._create(trial)
        self.run_ids[trial.trial_id] = run_id
        self.logged[trial.trial_id] = R.logged_epochs(self.client, run_id)
        return run_id

    def _create(self, trial) -> str:
        params = trial.config["params"]
        cfg = trial_config(self.space, params)
        tags = {R.PARENT_TAG: self.parent, TRIAL_TAG: trial.trial_id, R.KIND_TAG: "trial",
                "mlflow.runName": f"{self.space.name}-{trial.trial_id}", "hsakd.searched_keys": ",".join(params)}
        run_id = self.client.create_run(self.experiment_id, run_name=tags["mlflow.runName"], tags=tags).info.run_id
        R.log_params(self.client, run_id, {**flatten(config_to_dict(cfg)),
                                           **{f"search.{k}": v for k, v in params.items()}})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
            self.client.log_artifact(run_id, str(path))
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.run_id(trial)

    def history(self, trial_id: str, key: str) -> list[tuple[int, float]]:
        """(epoch, value) of ``key`` as the trial's MLflow run holds it, epochs backfilled after an interrupt
        included: what the console reports for a trial that a resumed sweep ran without a new epoch."""
        run_id = self.run_ids.get(trial_id)
        if run_id is None:
            found = trial_runs(self.client, self.experiment_id, self.parent)
            run_id = found[trial_id].info.run_id if trial_id in found else None
        return metric_history(self.client, run_id, key) if run_id else []

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "epoch" not in result:
            return
        run_id, epoch = self.run_id(trial), int(result["epoch"])
        self._tag_node(run_id, trial.trial_id, result)
        self._note_store_warnings(run_id, trial.trial_id, result.get(WARNING_KEY))
        self.sharing.add(trial.trial_id, result)
        self.last_epoch[trial.trial_id] = epoch
        if epoch in self.logged[trial.trial_id]:
            return
        metrics = {k: v for k, v in result.items() if "/" in k or k in EPOCH_SCALARS}
        if self.space.tune.scheduler.type == "pbt":  # PBT mutates: the values this epoch ran with, as metrics
            # the result's own config, not trial.config: PBT may already have mutated that on seeing this result
            params = result.get("config", trial.config)["params"]
            metrics.update({f"hp/{k}": v for k, v in params.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        R.log_epoch(self.client, run_id, epoch, metrics, int(time.time() * 1000))
        self.logged[trial.trial_id].add(epoch)

    def _tag_node(self, run_id: str, trial_id: str, result: dict) -> None:
        """Tag the run with the node its Train worker (rank 0) ran on and its precision / compile mode; again if a
        restart changed them."""
        node = {tag: str(result[key]) for key, tag in NODE_TAGS.items() if key in result}
        if node and self.nodes.get(trial_id) != node:
            for tag, value in node.items():
                self.client.set_tag(run_id, tag, value)
            self.nodes[trial_id] = node

    def _note_store_warnings(self, run_id: str, trial_id: str, said: str | None) -> None:
        """Print each new warning of the trial's teacher store on the console, once, and tag the run with them all
        (a worker reports every warning so far with each epoch)."""
        seen = self.store_warnings.setdefault(trial_id, [])
        new = [m for m in (said or "").splitlines() if m and m not in seen]
        if not new:
            return
        for message in new:
            print(f"trial {trial_id}: {message}", flush=True)
        seen.extend(new)
        self.client.set_tag(run_id, STORE_WARNING_TAG, "\n".join(seen)[:5000])

    def _tag_sharing(self, run_id: str, trial_id: str) -> None:
        hits, steps = self.sharing.trial(trial_id)
        if steps:
            self.client.set_tag(run_id, "teacher_cache.hit_fraction", f"{hits / steps:.3f}")
            self.client.set_tag(run_id, "teacher_cache.shared", "read" if hits else "computed")

    def on_experiment_end(self, trials, **info) -> None:
        """The sweep's sharing on the parent run and in the log: which trials read shared outputs, how much (trials
        that ended before a ``--resume`` counted from their MLflow runs)."""
        filter_ = f"tags.`{R.PARENT_TAG}` = '{self.parent}' and tags.`{R.KIND_TAG}` = 'trial'"
        for run in self.client.search_runs([self.experiment_id], filter_string=filter_, max_results=10000):
            trial_id = run.data.tags.get(TRIAL_TAG)
            if trial_id and trial_id not in self.sharing.trials and "teacher_cache/hits" in run.data.metrics:
                self.sharing.seed(trial_id, logged_sharing(self.client, run.info.run_id))
        readers, reporting, hits, steps = self.sharing.summary()
        if not steps:
            return
        R.log_metric_once(self.client, self.parent, "teacher_cache/hit_fraction", hits / steps)  # once, even on resume
        self.client.set_tag(self.parent, "teacher_cache.summary", f"{readers} of {reporting} trials read shared "
                                                                  f"teacher outputs; {hits:.0f} of {steps:.0f} steps")
        per = ", ".join(f"{t} {h / s:.0%}" for t in sorted(self.sharing.trials)
                        for h, s in [self.sharing.trial(t)] if s)
        print(f"teacher outputs shared: {hits:.0f} of {steps:.0f} steps read from the store ({hits / steps:.0%}); "
              f"per trial: {per}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_id(trial)
        self._tag_sharing(run_id, trial.trial_id)
        last = self.last_epoch.get(trial.trial_id, max(self.logged[trial.trial_id], default=0))
        if last < self.space.base.train.epochs:
            self.client.set_tag(run_id, "stopped_by", self.space.tune.scheduler.type)
            R.finish_run(self.client, run_id, "KILLED")
        else:
            R.finish_run(self.client, run_id, "FINISHED")
        self.closed.add(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        R.finish_run(self.client, self.run_id(trial), "FAILED", error=trial_error(trial))
        self.closed.add(trial.trial_id)

    def close_unfinished(self) -> list[str]:
        """After an interrupt: log the epochs each unfinished trial's latest Train checkpoint made durable but this
        callback never received (Tune stopped before handing them over), then mark its run KILLED. ``--resume``
        reopens the same runs. Returns their run ids.

        The trials are found in MLflow (this parent's trial runs still RUNNING), not only in this object's memory:
        after ``--resume`` Tune restores the callbacks it pickled with the experiment and reports to those, so the
        sweep's driver may hold a copy that never saw a result. Reads MLflow and the storage only, never Ray."""
        unfinished = {self.run_ids[t]: t for t in self.run_ids if t not in self.closed}
        filter_ = (f"tags.`{R.PARENT_TAG}` = '{self.parent}' and tags.`{R.KIND_TAG}` = 'trial' and "
                   "attributes.status = 'RUNNING'")
        for run in self.client.search_runs([self.experiment_id], filter_string=filter_, max_results=10000):
            unfinished.setdefault(run.info.run_id, run.data.tags.get(TRIAL_TAG, ""))
        for run_id, trial_id in unfinished.items():
            train_run = Path(self.train_storage) / trial_id
            if trial_id and train_run.is_dir():
                backfill_epochs(self.client, run_id, str(train_run))
            R.finish_run(self.client, run_id, "KILLED")
            self.closed.add(trial_id)
        return list(unfinished)


def trial_error(trial) -> str:
    """The last line of the error Tune wrote for ``trial`` (the exception's type and message), before this callback
    runs; a fixed pointer to the error file when there is none."""
    path = trial.error_file
    lines = Path(path).read_text().strip().splitlines() if path and Path(path).is_file() else []
    return lines[-1] if lines else "trial failed (see Ray trial error file)"


def trial_runs(client: MlflowClient, experiment_id: str, parent: str) -> dict:
    """Trial id -> its MLflow child run under ``parent`` (the one source that outlives the driver's memory)."""
    filter_ = f"tags.`{R.PARENT_TAG}` = '{parent}' and tags.`{R.KIND_TAG}` = 'trial'"
    runs = client.search_runs([experiment_id], filter_string=filter_, max_results=10000)
    return {run.data.tags[TRIAL_TAG]: run for run in runs if TRIAL_TAG in run.data.tags}


def metric_history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """(epoch, value) of ``key`` in ``run_id``, one per epoch (the latest write of an epoch wins), in epoch order."""
    by_epoch = {m.step: m.value for m in sorted(client.get_metric_history(run_id, key),
                                                key=lambda m: (m.step, m.timestamp))}
    return sorted(by_epoch.items())


def trial_outcomes(client: MlflowClient, experiment_id: str, parent: str, result_grid,
                   metric: str) -> list[TrialOutcome]:
    """Every trial's true final state: its epochs and metrics from its MLflow run, its sampled values from Tune.

    After ``Tuner.restore`` Tune's record of a trial can be short (a trial whose last epoch was checkpointed during
    the interrupt reports nothing when restarted: no history, no run id in this driver's memory), while its MLflow
    run holds every epoch, backfilled from the checkpoint. A trial with no run (it never started) keeps Tune's."""
    runs = trial_runs(client, experiment_id, parent)
    outcomes = []
    for result in result_grid:
        tuned = outcome_from_result(result, metric)
        run = runs.get(tuned.trial_id)
        if run is None:
            outcomes.append(tuned)
            continue
        history = metric_history(client, run.info.run_id, metric)
        outcomes.append(TrialOutcome(
            tuned.trial_id, tuned.params, pd.DataFrame(history or None, columns=["epoch", metric]),
            {**run.data.metrics, "epoch": history[-1][0] if history else tuned.last.get("epoch", 0)},
            tuned.error or run.info.status == "FAILED", run.info.run_id))
    return outcomes
