"""A resumed sweep's results are built from every trial's true final state (issue 27, case 1): its MLflow run,
where every epoch is logged once (checkpointed epochs backfilled after an interrupt), not what a restored Tune driver
happens to remember. Real sqlite MLflow store, the real trial logger, real files; Tune's side as ``Tuner.restore``
leaves it for a trial whose last epoch was checkpointed during the interrupt: no history, and no run ids in the
restored logger's memory."""
from __future__ import annotations

import csv
import math
import time
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune import Result

from hsakd_ray.config import Config, dump_config
from hsakd_ray.engine.checkpoint import write_checkpoint
from hsakd_ray.models import build_model
from hsakd_ray.tracking import runs as R
from hsakd_ray.tune.experiment import summarise
from hsakd_ray.tune.mlflow_logger import MLflowTrialLogger
from hsakd_ray.tune.space import load_space
from hsakd_ray.tune.sweep_table import SweepTable

METRIC, EPOCHS = "val/top1", 4
# trial id -> (temperature, val/top1 per epoch); t2 wins at its last epoch, checkpointed during the interrupt
TRIALS = {"t1": (2.0, [30.0, 38.0, 42.0, 44.14]), "t2": (4.0, [35.0, 45.0, 52.0, 60.69]),
          "t3": (6.0, [20.0, 25.0, 28.0, 31.0])}


@pytest.fixture()
def sweep(tmp_path, monkeypatch):
    """(space, client, parent run id, experiment id) of a sweep on a real sqlite store, with a real teacher."""
    monkeypatch.chdir(tmp_path)
    cfg = Config()
    cfg.data.name, cfg.data.image_size = "digits", 16
    cfg.teacher.arch = cfg.student.arch = "resnet8"
    meta = {"kind": "teacher", "method": None, "arch": "resnet8", "num_classes": 10, "aux_stages": [1, 2, 3],
            "epoch": 1, "metrics": {}, "dataset": "digits"}
    teacher = write_checkpoint(tmp_path / "teacher", model_state=build_model("resnet8", 10, "all").state_dict(),
                               meta=meta, config_yaml=dump_config(cfg))
    raw = {"base": {"data": {"name": "digits", "image_size": 16, "val_fraction": 0.1},
                    "teacher": {"arch": "resnet8"}, "student": {"arch": "resnet8"},
                    "optim": {"schedule": "constant", "milestones": []}, "train": {"epochs": EPOCHS},
                    "tracking": {"experiment": "resume"}},
           "teacher": {"checkpoint": str(teacher)},
           "search": {"distill.temperature": {"grid": [v[0] for v in TRIALS.values()]}},
           "tune": {"name": "resumed", "search_alg": "grid"}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    space = load_space(tmp_path / "space.yaml")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = R.get_experiment_id(client, "resume")
    parent = R.start_run(client, experiment_id, "resumed", R.base_tags("tune", "resumed"))
    return space, client, parent, experiment_id


def trial(trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={"params": {"distill.temperature": TRIALS[trial_id][0]}},
                           error_file=None)


def run_before_the_interrupt(space, client, parent, experiment_id, tmp_path) -> None:
    """The first driver: t1 and t3 finish; t2 reports epochs 1-3, then Ctrl-C. Its epoch-4 checkpoint was persisted
    during the interrupt: the driver logs it from the checkpoint (backfill) and closes the run KILLED."""
    logger = MLflowTrialLogger(client.tracking_uri, experiment_id, parent, space, str(tmp_path / "trials"))
    for trial_id, (_, top1) in TRIALS.items():
        logger.on_trial_start(0, [], trial(trial_id))
        for epoch, value in enumerate(top1 if trial_id != "t2" else top1[:3], start=1):
            logger.on_trial_result(0, [], trial(trial_id), {"epoch": epoch, METRIC: value, "epoch_time": 1.0,
                                                            "compute/cpu_seconds": 10.0 * epoch})
        if trial_id != "t2":
            logger.on_trial_complete(0, [], trial(trial_id))
    run_id = logger.run_ids["t2"]
    R.log_epoch(client, run_id, EPOCHS, {METRIC: TRIALS["t2"][1][-1], "epoch_time": 1.0,
                                         "compute/cpu_seconds": 40.0}, int(time.time() * 1000))  # the backfill
    R.finish_run(client, run_id, "KILLED")


def restored_grid(tmp_path) -> list[Result]:
    """The ResultGrid of the resumed ``fit``: t2 was restarted, found its final checkpoint and reported nothing."""
    grid = []
    for trial_id, (temperature, top1) in TRIALS.items():
        config = {"params": {"distill.temperature": temperature}}
        if trial_id == "t2":
            metrics, history = {"trial_id": trial_id, "config": config}, None
        else:
            history = pd.DataFrame({"epoch": range(1, EPOCHS + 1), METRIC: top1})
            metrics = {"trial_id": trial_id, "epoch": EPOCHS, METRIC: top1[-1], "config": config}
        grid.append(Result(metrics=metrics, checkpoint=None, error=None, metrics_dataframe=history,
                           path=str(tmp_path / "resumed" / f"run_trial_{trial_id}_0_temperature={temperature}")))
    return grid


def test_resumed_sweep_ranks_every_trial_by_its_true_final_state(sweep, tmp_path):
    space, client, parent, experiment_id = sweep
    run_before_the_interrupt(space, client, parent, experiment_id, tmp_path)
    # --resume: Tune restores its own callbacks; this driver's run ids are empty. t2 restarts and ends at once.
    resumed = MLflowTrialLogger(client.tracking_uri, experiment_id, parent, space, str(tmp_path / "trials"))
    resumed.on_trial_start(0, [], trial("t2"))
    resumed.on_trial_complete(0, [], trial("t2"))

    exp_path = tmp_path / "ray_results" / "resumed"
    done = summarise(space, restored_grid(tmp_path), client, parent, str(tmp_path / "teacher"), exp_path, METRIC,
                     "max")

    runs = {r.data.tags["hsakd.trial_id"]: r for r in client.search_runs(
        [experiment_id], f"tags.`hsakd.kind` = 'trial' and tags.`mlflow.parentRunId` = '{parent}'")}
    assert {t: r.info.status for t, r in runs.items()} == {"t1": "FINISHED", "t2": "FINISHED", "t3": "FINISHED"}
    assert done["best"]["trial_id"] == "t2" and done["best"][f"best_{METRIC}"] == pytest.approx(60.69)
    with open(exp_path / "results" / "trials.csv") as f:
        table = {r["trial_id"]: r for r in csv.DictReader(f)}
    assert [r["trial_id"] for r in done["rows"]] == ["t2", "t1", "t3"]
    for trial_id, (_, top1) in TRIALS.items():
        row = table[trial_id]
        assert float(row[f"best_{METRIC}"]) == pytest.approx(max(top1)) and not math.isnan(float(row["cpu_seconds"]))
        assert int(row["epochs"]) == EPOCHS and row["mlflow_run_id"] == runs[trial_id].info.run_id  # always filled
    best_config = yaml.safe_load((exp_path / "results" / "best_config.yaml").read_text())
    assert best_config["distill"]["temperature"] == TRIALS["t2"][0]
    tags = client.get_run(parent).data.tags
    assert tags["best_trial_id"] == "t2" and tags["best_mlflow_run_id"] == runs["t2"].info.run_id
    assert client.get_run(parent).data.metrics[f"best_{METRIC}"] == pytest.approx(60.69)
    assert (exp_path / "results" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_console_reports_a_resumed_trial_at_the_epoch_its_run_holds(sweep, tmp_path):
    space, client, parent, experiment_id = sweep
    run_before_the_interrupt(space, client, parent, experiment_id, tmp_path)
    resumed = MLflowTrialLogger(client.tracking_uri, experiment_id, parent, space, str(tmp_path / "trials"))
    lines: list[str] = []
    table = SweepTable(space, METRIC, "max", printer=lines.append, history=resumed.history)
    for callback in (resumed, table):  # Tune's order: the logger, then the table
        callback.on_trial_start(0, [], trial("t2"))
    for callback in (resumed, table):
        callback.on_trial_complete(0, [], trial("t2"))
    assert lines == [f"trial t2 finished at epoch {EPOCHS}/{EPOCHS}: {METRIC} 60.69 (best 60.69)"]
