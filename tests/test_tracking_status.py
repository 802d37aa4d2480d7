"""Run bookkeeping in a real MLflow store (sqlite in a temporary directory), without starting Ray: the statuses a
sweep's trial runs end with, one value per epoch across restarts, runs whose driver died, and where the tracking URI
comes from. The same code runs inside ``hsakd-ray tune`` and ``hsakd-ray teacher|distill``; the end-to-end runs are
in test_tune_e2e.py and test_train_ray.py (slow)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from hsakd_ray.tracking import runs as R
from hsakd_ray.tracking.store import resolve_tracking_uri
from hsakd_ray.tune.mlflow_logger import TRIAL_TAG, MLflowTrialLogger
from hsakd_ray.tune.space import load_space

EPOCHS = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store for the module (creating its tables takes a few seconds); each test its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture()
def experiment(store, request) -> tuple[MlflowClient, str]:
    client = MlflowClient(store)
    return client, client.create_experiment(request.node.name)


def space_file(tmp_path: Path, scheduler: str = "asha") -> Path:
    raw = {"base": {"data": {"name": "digits", "image_size": 16}, "student": {"arch": "resnet8"},
                    "teacher": {"arch": "resnet8"}, "train": {"epochs": EPOCHS}},
           "teacher": "runs:/0123/checkpoint",
           "search": {"distill.temperature": {"uniform": [1.0, 6.0]}, "optim.lr": {"choice": [0.05, 0.1]}},
           "tune": {"scheduler": {"type": scheduler}}}
    if scheduler == "pbt":
        raw["tune"]["scheduler"]["hyperparam_mutations"] = {"optim.lr": {"loguniform": [0.01, 0.2]}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def trial(trial_id: str, temperature: float = 2.5, lr: float = 0.1) -> Trial:
    """A Tune trial object as the Tune controller hands it to callbacks (``stub``: its trainable is not looked up)."""
    return Trial("run_trial", config={"params": {"distill.temperature": temperature, "optim.lr": lr}},
                 trial_id=trial_id, stub=True)


def logger_for(experiment, tmp_path: Path, scheduler: str = "asha") -> tuple[MLflowTrialLogger, str]:
    client, experiment_id = experiment
    parent = client.create_run(experiment_id, run_name="sweep").info.run_id
    space = load_space(space_file(tmp_path, scheduler))
    return MLflowTrialLogger(client.tracking_uri, experiment_id, parent, space, str(tmp_path / "trials")), parent


def report(logger: MLflowTrialLogger, t: Trial, epoch: int, top1: float, **extra) -> None:
    result = {"epoch": epoch, "val/top1": top1, "train/loss": 1.0 / epoch, "lr": 0.1, "epoch_time": 2.0,
              "trial_id": t.trial_id,
              "config": t.config, **extra}
    logger.on_trial_result(0, [], t, result)


def history(client: MlflowClient, run_id: str, key: str = "val/top1") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# ---------------------------------------------------------------- a sweep's trial runs

def test_a_trial_the_scheduler_stops_early_is_killed_with_stopped_by(experiment, tmp_path):
    client, _ = experiment
    logger, parent = logger_for(experiment, tmp_path)
    stopped, finished = trial("t_00000"), trial("t_00001", temperature=4.0)
    for t in (stopped, finished):
        logger.on_trial_start(0, [], t)
    for epoch in (1, 2):
        report(logger, stopped, epoch, 10.0 * epoch)
    logger.on_trial_complete(0, [], stopped)  # ASHA stops a trial by completing it before train.epochs
    for epoch in range(1, EPOCHS + 1):
        report(logger, finished, epoch, 20.0 * epoch)
    logger.on_trial_complete(0, [], finished)

    runs = {r.data.tags[TRIAL_TAG]: r for r in client.search_runs(
        [logger.experiment_id], f"tags.`{R.PARENT_TAG}` = '{parent}'")}
    assert set(runs) == {"t_00000", "t_00001"}
    assert runs["t_00000"].info.status == "KILLED" and runs["t_00000"].data.tags["stopped_by"] == "asha"
    assert runs["t_00001"].info.status == "FINISHED" and "stopped_by" not in runs["t_00001"].data.tags
    assert history(client, runs["t_00000"].info.run_id) == [(1, 10.0), (2, 20.0)]
    assert history(client, runs["t_00001"].info.run_id) == [(e, 20.0 * e) for e in range(1, EPOCHS + 1)]
    params = runs["t_00001"].data.params
    assert params["search.distill.temperature"] == "4.0" and params["distill.temperature"] == "4.0"
    assert params["search.optim.lr"] == "0.1" and params["train.epochs"] == str(EPOCHS)
    assert runs["t_00001"].data.tags["hsakd.searched_keys"] == "distill.temperature,optim.lr"
    assert runs["t_00001"].data.tags[R.KIND_TAG] == "trial"


def test_a_restarted_trial_keeps_one_run_and_one_value_per_epoch(experiment, tmp_path):
    """A worker restart or ``--resume`` reports epochs again; the first value logged for an epoch stays, and a new
    logger (a new driver after ``--resume``) finds the trial's run by its tag instead of creating a second one."""
    client, _ = experiment
    logger, parent = logger_for(experiment, tmp_path)
    t = trial("t_00007")
    logger.on_trial_start(0, [], t)
    report(logger, t, 1, 30.0)
    report(logger, t, 2, 40.0)
    report(logger, t, 2, 99.0)  # the same epoch again after a restart from epoch 1's checkpoint
    first_run = logger.run_ids["t_00007"]

    again = MLflowTrialLogger(client.tracking_uri, logger.experiment_id, parent, logger.space, logger.train_storage)
    again.on_trial_start(0, [], t)
    assert again.run_ids["t_00007"] == first_run
    assert client.get_run(first_run).info.status == "RUNNING"
    for epoch, top1 in [(2, 77.0), (3, 50.0), (4, 60.0)]:
        report(again, t, epoch, top1)
    again.on_trial_complete(0, [], t)

    runs = client.search_runs([logger.experiment_id], f"tags.`{TRIAL_TAG}` = 't_00007'")
    assert [r.info.run_id for r in runs] == [first_run]
    assert runs[0].info.status == "FINISHED"
    assert history(client, first_run) == [(1, 30.0), (2, 40.0), (3, 50.0), (4, 60.0)]


def test_pbt_logs_the_values_each_epoch_ran_with(experiment, tmp_path):
    client, _ = experiment
    logger, _ = logger_for(experiment, tmp_path, scheduler="pbt")
    t = trial("t_00003", lr=0.1)
    logger.on_trial_start(0, [], t)
    report(logger, t, 1, 10.0)
    ran_with = {"params": {"distill.temperature": 2.5, "optim.lr": 0.1}}
    t.config = {"params": {"distill.temperature": 2.5, "optim.lr": 0.03}}  # PBT mutated it on seeing epoch 2
    report(logger, t, 2, 20.0, config=ran_with)
    report(logger, t, 3, 30.0)
    run_id = logger.run_ids["t_00003"]
    assert [v for _, v in history(client, run_id, "hp/optim.lr")] == pytest.approx([0.1, 0.1, 0.03])
    assert [v for _, v in history(client, run_id, "hp/distill.temperature")] == pytest.approx([2.5] * 3)


# ---------------------------------------------------------------- runs whose driver died

def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_runs_whose_driver_died_are_marked_killed_on_the_next_start(experiment):
    client, experiment_id = experiment

    def running(name: str, host: str, pid: int) -> str:
        tags = R.base_tags("teacher", name) | {R.HOST_TAG: host, R.PID_TAG: str(pid)}
        return R.start_run(client, experiment_id, name, tags, {"train.epochs": 3})

    orphan = running("orphan", socket.gethostname(), dead_pid())
    live = running("live", socket.gethostname(), os.getpid())
    elsewhere = running("elsewhere", "another-host", dead_pid())  # its driver may be alive on that host
    finished = running("finished", socket.gethostname(), dead_pid())
    R.finish_run(client, finished, "FINISHED")

    assert R.reconcile_orphans(client, [experiment_id]) == [orphan]
    status = {run_id: client.get_run(run_id).info.status for run_id in (orphan, live, elsewhere, finished)}
    assert status == {orphan: "KILLED", live: "RUNNING", elsewhere: "RUNNING", finished: "FINISHED"}
    assert client.get_run(orphan).data.tags["hsakd.reconciled"] == "driver process gone"
    assert R.reconcile_orphans(client, [experiment_id]) == []


def test_failed_run_carries_its_error_and_resume_reopens_the_same_run(experiment):
    client, experiment_id = experiment
    tags = R.base_tags("distill", "job")
    run_id = R.start_run(client, experiment_id, "job", tags, {"optim.lr": 0.05, "train.epochs": 2})
    R.finish_run(client, run_id, "FAILED", error="ValueError: train.batch_size 33 is not divisible by 2")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "ValueError: train.batch_size 33 is not divisible by 2"
    assert run.data.params == {"optim.lr": "0.05", "train.epochs": "2"}

    assert R.start_run(client, experiment_id, "job", tags, resume=True) == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    assert R.start_run(client, experiment_id, "job", tags) != run_id  # without resume: a new run


# ---------------------------------------------------------------- where the tracking URI comes from

def test_tracking_uri_precedence_flag_then_config_then_environment_then_default(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    flag, config, env = "http://127.0.0.1:5001", "http://127.0.0.1:5002", "http://127.0.0.1:5003"
    assert resolve_tracking_uri(None, None) == f"sqlite:///{tmp_path / 'mlflow.db'}"  # made absolute for Ray
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    assert resolve_tracking_uri(None, None) == env
    assert resolve_tracking_uri(None, config) == config
    assert resolve_tracking_uri(flag, config) == flag
    assert resolve_tracking_uri(flag, None) == flag
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///relative/store.db")
    assert resolve_tracking_uri(None, None) == f"sqlite:///{tmp_path / 'relative' / 'store.db'}"
