"""Ctrl-C during a sweep, in the fast loop (issue 26.3): what MLflow holds afterwards and the exit code, with real
signals, a real sqlite store and the real callback, tracked run and CLI; no Ray cluster (tests/test_tune_e2e.py
keeps the end-to-end versions).

A sweep's interrupt path (tune/experiment.py, ``run_sweep``): ``SweepInterrupt`` turns the first Ctrl-C into Tune's
graceful stop (Tune's SIGUSR1 handler) and remembers it; then, or on a KeyboardInterrupt out of ``fit``, the MLflow
callback's ``close_unfinished`` marks every trial still open KILLED, and ``tracked_run`` marks the parent KILLED and
lets KeyboardInterrupt through to the CLI, which exits 130.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from hsakd_ray.cli import main
from hsakd_ray.tracking import runs as R
from hsakd_ray.tune.experiment import SweepInterrupt
from hsakd_ray.tune.mlflow_logger import TRIAL_TAG, MLflowTrialLogger
from hsakd_ray.tune.space import load_space

EPOCHS = 2


def space(tmp_path: Path):
    raw = {"base": {"data": {"name": "digits", "image_size": 16}, "teacher": {"arch": "resnet8"},
                    "student": {"arch": "resnet8"}, "train": {"epochs": EPOCHS}},
           "teacher": {"config": {"train": {"epochs": 1}}},
           "search": {"distill.temperature": {"grid": [2.0, 3.0, 4.0, 5.0, 6.0]}},
           "tune": {"name": "s", "search_alg": "grid", "scheduler": {"type": "asha", "grace_period": 1,
                                                                    "reduction_factor": 2}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_space(path)


def trial(trial_id: str, temperature: float) -> Trial:
    return Trial("run_trial", config={"params": {"distill.temperature": temperature}}, trial_id=trial_id, stub=True)


def report(logger: MLflowTrialLogger, t: Trial, epoch: int) -> None:
    logger.on_trial_result(0, [], t, {"epoch": epoch, "val/top1": 40.0 + epoch, "config": t.config})


def sweep_with_trials_in_every_state(tmp_path: Path, client: MlflowClient, parent) -> dict[str, str]:
    """A sweep's callback after four trials: finished, stopped early by ASHA, running, just started."""
    logger = MLflowTrialLogger(client.tracking_uri, parent.experiment_id, parent.run_id, space(tmp_path),
                               str(tmp_path / "trials"))
    done, stopped, running, started = (trial(f"t_0000{i}", 2.0 + i) for i in range(4))
    for epoch in range(1, EPOCHS + 1):
        report(logger, done, epoch)
    logger.on_trial_complete(0, [], done)
    report(logger, stopped, 1)
    logger.on_trial_complete(0, [], stopped)  # before its last epoch: the scheduler stopped it
    report(logger, running, 1)
    logger.on_trial_start(0, [], started)
    return logger


def states(client: MlflowClient, parent_id: str) -> dict[str, tuple[str, int | None, str | None]]:
    """trial id -> (status, end time, stopped_by) of each child run of ``parent_id``."""
    runs = client.search_runs([client.get_run(parent_id).info.experiment_id],
                              f"tags.`{R.PARENT_TAG}` = '{parent_id}'")
    return {r.data.tags[TRIAL_TAG]: (r.info.status, r.info.end_time, r.data.tags.get("stopped_by")) for r in runs}


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> MlflowClient:
    """One store for the module: creating a sqlite store costs seconds of migrations (each test has its own
    experiment)."""
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('interrupt') / 'mlflow.db'}")


def interrupted_sweep(tmp_path: Path, client: MlflowClient, fit) -> tuple[str, dict, SweepInterrupt]:
    """``run_sweep``'s interrupt bookkeeping around ``fit`` (Tune's ``fit``: here a function that gets the real
    signals); returns the parent run id, the children's states before the interrupt, the SweepInterrupt."""
    with pytest.raises(KeyboardInterrupt), \
            R.tracked_run(client, tmp_path.name, "s", R.base_tags("tune", "s")) as parent:
        logger = sweep_with_trials_in_every_state(tmp_path, client, parent)
        before = states(client, parent.run_id)
        with SweepInterrupt() as interrupt:
            try:
                fit()
            except KeyboardInterrupt:
                logger.close_unfinished()
                raise
        if interrupt.signum is not None:
            logger.close_unfinished()
            raise KeyboardInterrupt
    return parent.run_id, before, interrupt


def assert_closed_as_interrupted(client: MlflowClient, parent_id: str, before: dict) -> None:
    after = states(client, parent_id)
    assert client.get_run(parent_id).info.status == "KILLED"
    assert {t: s[0] for t, s in before.items()} == {"t_00000": "FINISHED", "t_00001": "KILLED", "t_00002": "RUNNING",
                                                    "t_00003": "RUNNING"}
    for closed in ("t_00000", "t_00001"):  # ended before the interrupt: untouched
        assert after[closed] == before[closed], closed
    assert after["t_00001"][2] == "asha"
    for unfinished in ("t_00002", "t_00003"):
        assert after[unfinished][0] == "KILLED" and after[unfinished][1] is not None, unfinished
        assert after[unfinished][2] is None, unfinished  # interrupted, not stopped by the scheduler


def send_sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(10)  # the signal's handler raises long before this ends


def test_ctrl_c_during_a_sweep_kills_the_parent_and_unfinished_trials_and_leaves_ended_ones(tmp_path, client):
    """Ctrl-C while Tune's graceful stop is installed: SweepInterrupt asks Tune to stop (SIGUSR1), Tune's fit
    returns normally, and the bookkeeping still closes everything as interrupted."""
    asked: list[int] = []

    def tune_fit() -> None:  # what Tune does around fit(): its SIGUSR1 handler stops the trials and returns
        previous = signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))
        try:
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 10
            while not asked and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            signal.signal(signal.SIGUSR1, previous)

    handler = signal.getsignal(signal.SIGINT)
    parent, before, interrupt = interrupted_sweep(tmp_path, client, tune_fit)
    assert asked == [signal.SIGUSR1] and interrupt.signum == signal.SIGINT
    assert_closed_as_interrupted(client, parent, before)
    assert signal.getsignal(signal.SIGINT) is handler


def test_ctrl_c_out_of_fit_kills_the_parent_and_unfinished_trials_and_leaves_ended_ones(tmp_path, client):
    """Ctrl-C when Tune has no graceful stop to offer (or a second Ctrl-C): KeyboardInterrupt out of fit at once."""
    parent, before, interrupt = interrupted_sweep(tmp_path, client, send_sigint)
    assert interrupt.signum is None
    assert_closed_as_interrupted(client, parent, before)


def test_a_second_ctrl_c_stops_at_once():
    asked: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))
    try:
        with pytest.raises(KeyboardInterrupt), SweepInterrupt() as interrupt:
            os.kill(os.getpid(), signal.SIGINT)  # the first: Tune is asked to stop, nothing raised
            deadline = time.monotonic() + 10
            while not asked and time.monotonic() < deadline:
                time.sleep(0.01)
            assert asked == [signal.SIGUSR1] and interrupt.signum == signal.SIGINT
            send_sigint()
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_ctrl_c_in_a_running_command_exits_130_with_one_line(tmp_path, monkeypatch, capsys):
    """The real path from a signal to the exit code: a job training in this process gets SIGINT, and ``main``
    returns 130 after printing one line."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"name": "synthetic", "image_size": 16, "synthetic_train_size": 32, "synthetic_test_size": 16,
                 "synthetic_classes": 4},
        "teacher": {"arch": "resnet8"}, "optim": {"schedule": "constant", "milestones": []},
        "train": {"epochs": 100000, "batch_size": 16, "device": "cpu", "output_dir": str(tmp_path / "out")}}))
    stop = threading.Event()

    def interrupt_after_the_first_checkpoint() -> None:
        while not stop.is_set():
            if list((tmp_path / "out").glob("*/latest/meta.json")):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=interrupt_after_the_first_checkpoint, daemon=True)
    watcher.start()
    try:
        code = main(["teacher", str(config), "--local"])
    finally:
        stop.set()
        watcher.join()
    captured = capsys.readouterr()
    assert "epoch 1/100000" in captured.out  # it was training when interrupted
    assert code == 130 and captured.err == "hsakd-ray: interrupted\n"
