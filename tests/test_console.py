"""The console a person reads: the sweep's compact table (fits 120 columns, only the sampled values that differ,
best so far, one line per finished / stopped / failed trial), the per-epoch job line with its ETA, and ``-v``."""
from __future__ import annotations

import logging
import os

import pytest
from ray.tune.experiment import Trial

from hsakd_ray import verbosity
from hsakd_ray.train.epoch_lines import format_duration, progress_line
from hsakd_ray.tune.space import load_space
from hsakd_ray.tune.sweep_table import SweepTable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def space():
    return load_space(os.path.join(ROOT, "search_spaces", "quickstart.yaml"), [])


def trial(trial_id: str, **params) -> Trial:
    return Trial("hsakd_trial", config={"params": params}, trial_id=trial_id, stub=True)


def test_sweep_table_fits_120_columns_and_shows_what_differs(space):
    lines: list[str] = []
    table = SweepTable(space, "val/top1", "max", every=1e9, printer=lines.append)
    long = [1, 2, 3] * 12  # a long sampled value must not widen the table past 120 columns
    trials = [trial("a0001", **{"student.aux_stages": long, "distill.temperature": 2.5, "distill.alpha": 1.0}),
              trial("a0002", **{"student.aux_stages": [3], "distill.temperature": 4.75, "distill.alpha": 1.0}),
              trial("a0003", **{"student.aux_stages": [2, 3], "distill.temperature": 1.25, "distill.alpha": 1.0})]
    for t in trials:
        table.on_trial_start(0, trials, t)
    for epoch, values in ((1, (60.0, 50.0, 40.0)), (2, (70.0, 65.0, None)), (4, (80.0, None, None))):
        for t, value in zip(trials, values):
            if value is not None:
                table.on_trial_result(0, trials, t, {"epoch": epoch, "val/top1": value})
    table.on_trial_complete(0, trials, trials[0])
    table.on_trial_complete(0, trials, trials[1])
    trials[2].error_message = "Traceback ...\nRuntimeError: out of memory"
    table.on_trial_error(0, trials, trials[2])
    rendered = table.render()

    assert all(len(line) <= 120 for line in rendered)
    assert rendered[0] == "trials: 3/6 done, 0 running | best val/top1 80 (trial a0001)"
    header = rendered[1].split()
    assert header == ["trial", "status", "aux_stages", "temperature", "epoch", "val/top1", "best"]  # alpha is 1.0
    rows = {line.split()[0]: line.split() for line in rendered[3:]}
    assert rows["a0001"][1] == "DONE" and rows["a0001"][-3:] == ["4/4", "80", "80"]
    assert rows["a0002"][1] == "STOPPED" and rows["a0002"][-3:] == ["2/4", "65", "65"]
    assert rows["a0003"][1] == "ERROR"
    assert lines == ["trial a0001 finished at epoch 4/4: val/top1 80 (best 80)",
                     "trial a0002 stopped early by asha at epoch 2/4: val/top1 65 (best 65)",
                     "error: trial a0003 failed: RuntimeError: out of memory"]


def test_progress_line_has_epoch_loss_metric_speed_and_eta():
    metrics = {"epoch": 3, "train/loss": 1.23456, "val/top1": 56.789, "val/head_1/top1": 40.0,
               "images_per_sec": 412.4}
    assert progress_line("job", 10, metrics, 12.0) == \
        "[job] epoch 3/10  loss 1.2346  val/top1 56.79  412 img/s  ETA 1m24s"
    assert progress_line("job", 3, metrics, 12.0).endswith("done")
    assert format_duration(3 * 3600 + 125) == "3h02m"


def test_verbosity_switches_ray_logging_and_mlflow_urls(monkeypatch):
    monkeypatch.delenv(verbosity.ENV, raising=False)
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    try:
        verbosity.configure(verbose=False)
        assert not verbosity.verbose() and verbosity.ray_logging_level() == logging.WARNING
        assert logging.getLogger("ray.tune").level == logging.WARNING
        assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
        verbosity.configure(verbose=True)
        assert verbosity.verbose() and logging.getLogger("ray").level == logging.INFO
    finally:
        for name in ("ray", "ray.tune", "ray.train", "ray.data"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        os.environ.pop(verbosity.ENV, None)


@pytest.mark.parametrize("argv,expected", [(["tune", "s.yaml"], False), (["-v", "tune", "s.yaml"], True),
                                           (["tune", "s.yaml", "-v"], True), (["distill", "c.yaml", "-v"], True)])
def test_verbose_flag_before_or_after_the_command(argv, expected):
    from hsakd_ray.cli import build_parser

    assert build_parser().parse_args(argv).verbose is expected
