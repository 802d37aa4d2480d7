"""A sweep interrupted with Ctrl-C and resumed reports what an uninterrupted one would (issue 27, cases 1 and 5), on
a real local Ray cluster and a real sqlite store: every trials.csv row and the parent's winner tags carry the MLflow
run and the best value that run holds; a resume with an edited space is refused before Ray starts; the experiment's
lock is gone once the sweep ends."""
from __future__ import annotations

import csv
import signal

import pytest
import yaml
from conftest import run_cli, server_pids, start_cli, wait_for_no_processes
from mlflow.tracking import MlflowClient
from test_tune_e2e import runs_by_kind, start_sweep_until_a_trial_trains, tiny_space

pytestmark = pytest.mark.slow


def test_a_resumed_sweep_ranks_and_tags_every_trial_by_its_mlflow_run(tmp_path):
    space = tiny_space(tmp_path, epochs=3)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = start_sweep_until_a_trial_trains(space, client, tmp_path, tmp_path / "log1.txt")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130, (tmp_path / "log1.txt").read_text()[-3000:]
    assert not wait_for_no_processes(exclude=server_pids(), timeout=60), "processes left behind"
    exp_path = tmp_path / "ray_results" / "resume"
    assert not (tmp_path / "ray_results" / "resume.lock").exists()  # released on the interrupt

    edited = yaml.safe_load(space.read_text())
    edited["search"]["distill.temperature"] = {"grid": [2.0, 8.0]}
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
    refused = run_cli("tune", str(tmp_path / "edited.yaml"), "--resume", str(exp_path), cwd=tmp_path, timeout=300)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "the space differs from the one this experiment started with (search.distill.temperature;" in \
        refused.stderr and refused.stderr.count("\n") == 1
    assert "Ray" not in refused.stdout  # refused before a Ray instance started

    resumed = start_cli("tune", str(space), "--resume", str(exp_path), cwd=tmp_path, log=tmp_path / "log2.txt")
    assert resumed.wait(timeout=900) == 0, (tmp_path / "log2.txt").read_text()[-3000:]
    log2 = (tmp_path / "log2.txt").read_text()
    assert "at epoch 0/3" not in log2, log2[-3000:]
    children = {r.data.tags["hsakd.trial_id"]: r for r in runs_by_kind(client, "resume")["trial"]}
    best_in_mlflow = {t: max(m.value for m in client.get_metric_history(r.info.run_id, "val/top1"))
                      for t, r in children.items()}
    with open(exp_path / "results" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["trial_id"] for r in rows) == sorted(children)
    for row in rows:  # every trial as its run holds it, run id filled
        assert row["mlflow_run_id"] == children[row["trial_id"]].info.run_id
        assert float(row["best_val/top1"]) == pytest.approx(best_in_mlflow[row["trial_id"]])
        assert int(row["epochs"]) == 3
    winner = max(best_in_mlflow, key=best_in_mlflow.get)
    assert rows[0]["trial_id"] == winner
    (parent,) = runs_by_kind(client, "resume")["tune"]
    assert parent.data.tags["best_trial_id"] == winner
    assert parent.data.tags["best_mlflow_run_id"] == children[winner].info.run_id
    best = yaml.safe_load((exp_path / "results" / "best_config.yaml").read_text())
    assert str(best["distill"]["temperature"]) == children[winner].data.params["search.distill.temperature"]
    assert not (tmp_path / "ray_results" / "resume.lock").exists()
    assert not wait_for_no_processes(exclude=server_pids()), "processes left behind"
