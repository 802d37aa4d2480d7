"""Issue 27.2/27.3 (fast part): interrupts in every phase, against a real sqlite MLflow store, without Ray.

SIGTERM is an interrupt like Ctrl-C (runs KILLED, exit code 143) that stops a sweep at once rather than waiting on
Ray, whose own processes may be going down with the driver's process group; after an interrupt the sweep closes every
trial run its parent still has RUNNING (found in MLflow: after --resume, Tune reports to the callbacks it restored,
not to the driver's); a sweep interrupted while its shared teacher trained is continued by --resume, and a plain rerun
says so before anything starts."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from hsakd_ray import cli
from hsakd_ray.cli import main
from hsakd_ray.tracking import runs as R


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


# ---------------------------------------------------------------- SIGTERM: an interrupt, exit 143

def test_sigterm_during_a_command_exits_143(monkeypatch, capsys):
    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this at once
        raise AssertionError("SIGTERM did not interrupt the command")

    def not_the_cli(signum, frame):
        raise AssertionError("SIGTERM reached the handler installed before the command")

    monkeypatch.setattr(cli, "cmd_models", terminated)
    before = signal.signal(signal.SIGTERM, not_the_cli)
    try:
        assert main(["models"]) == 143
        assert signal.getsignal(signal.SIGTERM) is not_the_cli  # restored when the command ends
    finally:
        signal.signal(signal.SIGTERM, before)
    assert capsys.readouterr().err == "hsakd-ray: terminated\n"


def test_sigterm_in_a_tracked_run_kills_the_run_and_stays_a_sigterm(store):
    from hsakd_ray.errors import Terminated

    client = MlflowClient(store)
    with pytest.raises(Terminated):
        with R.tracked_run(client, "sigterm", "job", R.base_tags("teacher", "job")) as run:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert client.get_run(run.run_id).info.status == "KILLED"


def test_sigterm_stops_a_sweep_at_once_without_waiting_on_tune(store):
    """Tune's graceful stop (SIGUSR1) would wait on Ray's GCS, which a SIGTERM to the process group has taken down:
    the sweep stops at once, as Terminated, and its parent run is closed KILLED."""
    from hsakd_ray.errors import Terminated
    from hsakd_ray.tune.experiment import SweepInterrupt

    asked_tune: list[int] = []
    client = MlflowClient(store)
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: asked_tune.append(signum))  # as Tune's fit does
    try:
        with pytest.raises(Terminated):
            with R.tracked_run(client, "sigterm", "sweep", R.base_tags("tune", "sweep")) as parent:
                with SweepInterrupt():
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(5)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert asked_tune == []
    assert client.get_run(parent.run_id).info.status == "KILLED"


# ---------------------------------------------------------------- closing a resumed sweep's trials

def test_closing_an_interrupted_sweep_kills_every_running_trial_of_its_parent(store, tmp_path, monkeypatch):
    """After --resume, Tune reports to the callback it pickled with the experiment; the driver's own callback has
    seen no trial. Its clean-up still finds the parent's RUNNING trial runs in MLflow, logs the epochs their Train
    checkpoints hold, and marks them KILLED; a finished trial is left as it is."""
    from hsakd_ray.tune import mlflow_logger as L
    from hsakd_ray.tune.space import load_space

    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump({
        "base": {"data": {"name": "digits", "image_size": 16}, "student": {"arch": "resnet8"},
                 "distill": {"method": "ce"}, "tracking": {"experiment": "closing"}},
        "search": {"optim.lr": {"choice": [0.1, 0.2]}}, "tune": {"name": "closing"}}))
    space = load_space(str(space_file))
    client = MlflowClient(store)
    experiment_id = R.get_experiment_id(client, "closing")
    parent = client.create_run(experiment_id, tags={R.KIND_TAG: "tune"}).info.run_id
    trials = {}
    for trial_id, status in (("t1", "RUNNING"), ("t2", "FINISHED")):
        run_id = client.create_run(experiment_id, tags={R.PARENT_TAG: parent, R.KIND_TAG: "trial",
                                                        L.TRIAL_TAG: trial_id}).info.run_id
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        trials[trial_id] = run_id
    train_storage = tmp_path / "closing-trials"
    (train_storage / "t1").mkdir(parents=True)
    backfilled = []
    monkeypatch.setattr(L, "backfill_epochs", lambda c, run_id, path: backfilled.append((run_id, path)) or [4])

    fresh = L.MLflowTrialLogger(store, experiment_id, parent, space, str(train_storage))
    assert fresh.close_unfinished() == [trials["t1"]]
    assert client.get_run(trials["t1"]).info.status == "KILLED"
    assert client.get_run(trials["t2"]).info.status == "FINISHED"
    assert backfilled == [(trials["t1"], str(train_storage / "t1"))]


# ---------------------------------------------------------------- interrupted while the shared teacher trained

def teacher_space(tmp_path: Path) -> Path:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "base": {"data": {"name": "digits", "image_size": 16}, "student": {"arch": "resnet8"},
                 "teacher": {"arch": "resnet8"}, "ray": {"storage_path": str(tmp_path / "ray_results")},
                 "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}},
        "teacher": {"config": {"teacher": {"arch": "resnet8", "aux_stages": "all"}, "train": {"epochs": 1}}},
        "search": {"distill.temperature": {"uniform": [1.0, 6.0]}}, "tune": {"name": "sweep"}}))
    return space


def test_a_sweep_interrupted_while_its_teacher_trained_is_continued_by_resume(tmp_path):
    from hsakd_ray.tune.sweep_checks import checked_sweep

    space = teacher_space(tmp_path)
    (tmp_path / "ray_results" / "sweep-teacher").mkdir(parents=True)  # what the interrupted teacher left
    sweep = checked_sweep(str(space), resume=str(tmp_path / "ray_results" / "sweep"))
    assert sweep.exp_path == str(tmp_path / "ray_results" / "sweep")


def test_a_plain_rerun_of_a_sweep_interrupted_in_its_teacher_points_to_resume(tmp_path, capsys):
    space = teacher_space(tmp_path)
    (tmp_path / "ray_results" / "sweep-teacher").mkdir(parents=True)
    assert main(["tune", str(space)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted while its teacher trained" in err
    assert f"--resume {tmp_path / 'ray_results' / 'sweep'}" in err
    assert not (tmp_path / "mlflow.db").exists()  # refused before MLflow or Ray started
