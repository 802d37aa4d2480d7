"""``hsakd-ray tune`` end to end on a real local Ray cluster with a real sqlite MLflow store: the shipped
quickstart (teacher trained once, one parent run, one child run per trial, statuses, artifacts, no orphan Train
workers after ASHA stops trials), resume after the driver is killed, the final run's teacher (trained once on
the whole training set after the sweep, reused by a second call) and the final stage (the best config and the ce
baseline as final children of the parent, the results table, the students as LoggedModels)."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from unittest import mock

import pytest
import yaml
from conftest import marked_processes, server_pids, start_cli, wait_for_no_processes
from mlflow.tracking import MlflowClient
from ray.train import Result

from hsakd_ray.engine import read_meta

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"


def runs_by_kind(client: MlflowClient, experiment: str) -> dict[str, list]:
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000) if exp else []:  # none yet: no runs
        out.setdefault(run.data.tags.get("hsakd.kind"), []).append(run)
    return out


def train_worker_count() -> int:
    return sum("RayTrainWorker" in cmd for cmd in marked_processes().values())


def wait_watching_workers(proc: subprocess.Popen, limit: int, timeout: float) -> int:
    """Wait for ``proc``; fail if more than ``limit`` Train workers stay alive for over 20 s (an orphan group)."""
    deadline, over_since, most = time.monotonic() + timeout, None, 0
    while proc.poll() is None:
        assert time.monotonic() < deadline, "experiment did not finish in time"
        count = train_worker_count()
        most = max(most, count)
        if count > limit:
            over_since = over_since or time.monotonic()
            assert time.monotonic() - over_since < 20, f"{count} Train workers alive: a stopped trial left orphans"
        else:
            over_since = None
        time.sleep(1.0)
    return most


def test_quickstart_end_to_end(tmp_path):
    space = yaml.safe_load(QUICKSTART.read_text())
    start = time.monotonic()
    proc = start_cli("tune", str(QUICKSTART), cwd=tmp_path, log=tmp_path / "log.txt")
    r = space["tune"]["resources"]
    most = wait_watching_workers(proc, limit=int(2 // (r["num_workers"] * r["cpus_per_worker"])) * r["num_workers"],
                                 timeout=1200)
    wall = time.monotonic() - start
    log = (tmp_path / "log.txt").read_text()
    assert proc.returncode == 0, log[-3000:]
    print(f"quickstart wall time {wall:.0f} s, at most {most} Train workers at once")

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = runs_by_kind(client, space["base"]["tracking"]["experiment"])
    teachers = {r.data.tags["hsakd.run_name"]: r for r in runs["teacher"]}
    assert sorted(teachers) == ["quickstart-final-teacher", "quickstart-teacher"]  # tuning split, whole set
    (parent,) = runs["tune"]
    assert parent.info.status == "FINISHED" and all(t.info.status == "FINISHED" for t in teachers.values())
    assert parent.data.tags["hsakd.teacher_saw_validation"] == "false" and "warning:" not in log
    children = runs["trial"]
    assert len(children) == space["tune"]["num_samples"]
    assert len({c.data.tags["hsakd.trial_id"] for c in children}) == len(children)  # one run per trial
    epochs = space["base"]["train"]["epochs"]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/top1")]
        assert steps == list(range(1, len(steps) + 1)), steps  # one value per epoch, no gaps
        assert "test/top1" not in child.data.metrics  # trials never look at the test set
        if child.info.status == "KILLED":  # whether ASHA stops one here depends on timing; a forced stop: test_asha_*
            assert child.data.tags["stopped_by"] == "asha" and len(steps) < epochs
        else:
            assert child.info.status == "FINISHED" and len(steps) == epochs
        assert {"student.aux_stages", "distill.temperature"} <= set(child.data.tags["hsakd.searched_keys"].split(","))
        assert "search.distill.temperature" in child.data.params
    assert_shared_teacher(client, log, parent, children, concurrent=most)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "trials.csv", "metric_vs_params.png", "metric_by_placement.png",
            "learning_curves.png"} <= artifacts
    best_child = assert_best_trial(client, parent, children)

    results = tmp_path / "ray_results" / "quickstart" / "results"
    best = yaml.safe_load((results / "best_config.yaml").read_text())
    final_ref = f"runs:/{teachers['quickstart-final-teacher'].info.run_id}/checkpoint"
    assert best["data"]["val_fraction"] == 0.0 and best["teacher"]["checkpoint"] == final_ref
    assert_holds_sampled_values(best, best_child)
    with open(results / "trials.csv") as f:
        assert len(list(csv.DictReader(f))) == len(children)
    assert "Top trials by val/top1" in log and "best config:" in log
    assert parent.data.metrics["best_val/top1"] == best_top1(client, best_child)  # the runs table sorts sweeps
    assert_final_stage(client, log, parent, runs["distill"], final_ref, results)
    assert not wait_for_no_processes(exclude=server_pids()), "the experiment left processes behind"
    assert_ui_shows_the_sweep(tmp_path, parent, children, runs["distill"])


def assert_ui_shows_the_sweep(tmp_path: Path, parent, trials: list, finals: list) -> None:
    """The sweep's own store in the MLflow UI (a real ``mlflow server`` over its sqlite file, headless Chromium):
    the trials and the final runs fold under the sweep's parent, and the Models tab lists each final student."""
    import asyncio

    from chromium import find_chromium
    from conftest import mlflow_server_on, wait_for_health
    from test_mlflow_ui import browse

    from hsakd_ray.tracking.ui import ui_lines

    binary = find_chromium()
    if binary is None:  # test_mlflow_ui.py skips visibly; .ci/run installs chromium
        print("chromium not found: the quickstart's MLflow UI was not opened")
        return
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_server_on(store, tmp_path / "mlruns", tmp_path / "server.log") as (process, url):
        wait_for_health(url, process)
        lines = ui_lines(url, parent.info.experiment_id, parent.info.run_id, "sweep")
        seen = asyncio.run(browse(binary, lines, tmp_path / "ui.png", [r.info.run_name for r in finals]))
    assert parent.info.run_name in seen["collapsed"]
    assert sorted(set(seen["expanded"]) - set(seen["collapsed"])) == sorted(r.info.run_name for r in trials + finals)
    assert seen["models_page"] and len(seen["model_links"]) == len(finals)


def assert_final_stage(client: MlflowClient, log: str, parent, finals: list, final_ref: str, results: Path) -> None:
    """The quickstart's final stage (tune.final: 1 seed, ce baseline): two children of the parent tagged final, each
    scored on the test set with its student a LoggedModel linked to its test metrics; the table of their own metrics
    in results.md, the parent's description and the console's last lines."""
    import mlflow

    assert sorted((r.data.tags["hsakd.final_method"], r.data.tags["hsakd.final_seed"]) for r in finals) == \
        [("ce", "0"), ("hsakd", "0")]
    by_method = {r.data.tags["hsakd.final_method"]: r for r in finals}
    for run in finals:
        assert run.info.status == "FINISHED" and run.data.tags["hsakd.final"] == "true"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["data.val_fraction"] == "0.0" and "val/top1" not in run.data.metrics
    assert by_method["hsakd"].data.params["teacher.checkpoint"] == final_ref
    with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": client.tracking_uri}):
        models = mlflow.search_logged_models(experiment_ids=[parent.info.experiment_id], output_format="list")
    by_run = {m.source_run_id: m for m in models}
    for run in finals:
        linked = {m.key: m.value for m in by_run[run.info.run_id].metrics}
        assert linked["test/top1_last"] == run.data.metrics["test/top1_last"]
        assert linked["test/top1_best_epoch"] == run.data.metrics["test/top1_best_epoch"]
    table = (results / "results.md").read_text()
    assert client.get_run(parent.info.run_id).data.tags["mlflow.note.content"] == table
    assert "results.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    for method, run in by_method.items():  # one seed: the mean is the run's own figure, the std 0
        m = run.data.metrics
        assert f"| {method} | 1 (0) | {m['test/top1_last']:.2f} ± 0.00 | {m['test/top1_best_epoch']:.2f} ± 0.00 |" \
            in table
    assert log.rstrip().endswith(table.rstrip().splitlines()[-1])  # the console ends with the table
    assert "Downloading artifacts" not in log


def hit_fractions(client: MlflowClient, run) -> dict[int, float]:
    """Per epoch, the share of the trial's teacher outputs read from the sweep's store (tune.share_teacher)."""
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, "teacher_cache/hit_fraction")}


def assert_shared_teacher(client: MlflowClient, log: str, parent, children: list, concurrent: int) -> None:
    """``tune.share_teacher: auto`` shared the teacher's outputs: every trial reports its share per epoch and is
    tagged; all but the trials that started together read outputs another trial computed (one stream: the searched
    keys never change the batches); the parent's summary counts every trial."""
    assert "teacher outputs: shared by the trials" in log and "teacher outputs shared:" in log
    readers = 0
    for child in children:
        epochs = [m.step for m in client.get_metric_history(child.info.run_id, "val/top1")]
        assert sorted(hit_fractions(client, child)) == epochs
        tag = float(child.data.tags["teacher_cache.hit_fraction"])
        assert child.data.tags["teacher_cache.shared"] == ("read" if tag > 0 else "computed")
        readers += tag > 0
    print(f"teacher outputs read by {readers} of {len(children)} trials; parent: "
          f"{parent.data.tags['teacher_cache.summary']}")
    assert readers >= len(children) - max(concurrent, 1)
    assert parent.data.tags["teacher_cache.summary"].startswith(f"{readers} of {len(children)} trials read")
    assert parent.data.metrics["teacher_cache/hit_fraction"] > 0


def best_top1(client: MlflowClient, run) -> float:
    return max(m.value for m in client.get_metric_history(run.info.run_id, "val/top1"))


def assert_best_trial(client: MlflowClient, parent, children: list):
    """``best_trial_id`` names the trial with the highest val/top1; returns that trial's run."""
    best = max(children, key=lambda c: best_top1(client, c))
    assert parent.data.tags["best_trial_id"] == best.data.tags["hsakd.trial_id"]
    assert parent.data.tags["best_mlflow_run_id"] == best.info.run_id
    return best


def assert_holds_sampled_values(best_config: dict, run) -> None:
    """best_config.yaml carries each value the trial sampled (its ``search.*`` params)."""
    sampled = {k.removeprefix("search."): v for k, v in run.data.params.items() if k.startswith("search.")}
    assert sampled
    for key, value in sampled.items():
        section, name = key.split(".")
        assert str(best_config[section][name]) == value, key


def trial_result_epochs(exp_path: Path, trial_id: str, after: float) -> list[int]:
    """The epochs of the results Tune recorded for the trial after time ``after`` (seconds), in report order."""
    (path,) = exp_path.glob(f"*{trial_id}*/result.json")
    results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["epoch"] for r in sorted(results, key=lambda r: r["timestamp"]) if r["timestamp"] > after]


def tiny_space(tmp_path: Path, epochs: int = 3) -> Path:
    raw = {
        "base": {"data": {"name": "digits", "image_size": 16, "val_fraction": 0.1},
                 "teacher": {"arch": "resnet8"}, "student": {"arch": "resnet8"},
                 "optim": {"lr": 0.05, "schedule": "constant", "milestones": []},
                 "train": {"epochs": epochs, "batch_size": 64},
                 "tracking": {"experiment": "resume"}},
        "teacher": {"config": {"teacher": {"arch": "resnet8", "aux_stages": "all"}, "train": {"epochs": 1},
                               "scaling": {"num_workers": 1, "cpus_per_worker": 2}}},
        "search": {"distill.temperature": {"grid": [2.0, 4.0]}},
        "tune": {"name": "resume", "max_concurrent_trials": 1, "search_alg": "grid",
                 "resources": {"num_workers": 1, "cpus_per_worker": 1},
                 "final": {"run": False}},  # the final stage: test_quickstart_end_to_end
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_resume_after_killed_driver(tmp_path):
    space = tiny_space(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = subprocess.Popen([str(Path(os.sys.executable).parent / "hsakd-ray"), "tune", str(space)], cwd=tmp_path,
                            stdout=open(tmp_path / "log1.txt", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    finished_before: dict[str, int] = {}
    while not finished_before:  # kill once the first trial has finished and the second has reported an epoch
        assert proc.poll() is None, (tmp_path / "log1.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(2)
        exp = client.get_experiment_by_name("resume")
        trials = client.search_runs([exp.experiment_id], "tags.`hsakd.kind` = 'trial'") if exp else []
        done = {t.data.tags["hsakd.trial_id"] for t in trials if t.info.status == "FINISHED"}
        running = [t for t in trials if t.info.status == "RUNNING" and
                   client.get_metric_history(t.info.run_id, "val/top1")]
        if done and running and len(client.get_metric_history(running[0].info.run_id, "val/top1")) == 1:
            finished_before = {t.data.tags["hsakd.trial_id"]: t.info.end_time for t in trials
                               if t.info.status == "FINISHED"}
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started, without warning
    proc.wait()
    wait_for_no_processes(exclude=server_pids(), timeout=30)
    exp_path = tmp_path / "ray_results" / "resume"
    (cut,) = [t for t in client.search_runs([exp.experiment_id], "tags.`hsakd.kind` = 'trial'")
              if t.data.tags["hsakd.trial_id"] not in finished_before]
    cut_id = cut.data.tags["hsakd.trial_id"]
    logged_at_kill = [m.step for m in client.get_metric_history(cut.info.run_id, "val/top1")]
    assert 1 <= len(logged_at_kill) < 3, logged_at_kill  # killed unfinished
    checkpoint_epoch = read_meta(Result.from_path(str(tmp_path / "ray_results" / "resume-trials" / cut_id))
                                 .checkpoint.path)["epoch"]
    killed_at = time.time()  # Tune stamps each result with its report time in whole seconds

    resumed = start_cli("tune", str(space), "--resume", str(exp_path), cwd=tmp_path, log=tmp_path / "log2.txt")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "log2.txt").read_text()[-3000:]
    log2 = (tmp_path / "log2.txt").read_text()
    assert "teacher: reusing" in log2  # the teacher is never trained twice

    runs = runs_by_kind(client, "resume")
    teachers = {r.data.tags["hsakd.run_name"]: r for r in runs["teacher"]}
    assert sorted(teachers) == ["resume-final-teacher", "resume-teacher"] and len(runs["tune"]) == 1
    parent = runs["tune"][0]
    assert parent.info.status == "FINISHED"
    # the final run's teacher: its own run, trained once on the whole training set (val_fraction 0, so it evaluated
    # on the test set), tagged on the parent and named by best_config.yaml
    final = teachers["resume-final-teacher"]
    final_ref = f"runs:/{final.info.run_id}/checkpoint"
    assert final.info.status == "FINISHED" and final.data.params["data.val_fraction"] == "0.0"
    assert teachers["resume-teacher"].data.params["data.val_fraction"] == "0.1"
    assert "test/top1" in final.data.metrics and "val/top1" in teachers["resume-teacher"].data.metrics
    assert parent.data.tags["hsakd.final_teacher"] == final_ref
    best_config = exp_path / "results" / "best_config.yaml"
    best = yaml.safe_load(best_config.read_text())
    assert best["teacher"]["checkpoint"] == final_ref and best["data"]["val_fraction"] == 0.0
    children = runs["trial"]
    assert len(children) == 2 and len({c.data.tags["hsakd.trial_id"] for c in children}) == 2
    for child in children:
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/top1")]
        assert steps == [1, 2, 3], steps  # resumed from its checkpoint: no epoch twice, none missing
        trial_id = child.data.tags["hsakd.trial_id"]
        if trial_id in finished_before:  # a finished trial is not run again
            assert child.info.end_time == finished_before[trial_id]
    # the cut trial continued from its checkpoint: its first report after --resume is the checkpoint's epoch + 1
    after = trial_result_epochs(exp_path, cut_id, after=killed_at)
    print(f"killed after epochs {logged_at_kill} in MLflow, checkpoint of epoch {checkpoint_epoch}; "
          f"reported after --resume: {after}")
    assert after == list(range(checkpoint_epoch + 1, 4)), after
    # shared teacher outputs survive the kill: the first trial computed every batch into the store (in the
    # experiment's storage); the cut trial read every batch, after --resume too, and none was computed again
    fractions = {c.data.tags["hsakd.trial_id"]: hit_fractions(client, c) for c in children}
    print(f"teacher outputs read per epoch: {fractions}")
    (first_id,) = finished_before
    assert fractions == {first_id: {1: 0.0, 2: 0.0, 3: 0.0}, cut_id: {1: 1.0, 2: 1.0, 3: 1.0}}
    stored = list((tmp_path / "ray_results" / "resume-teacher-outputs").rglob("*.pt"))
    assert stored and max(f.stat().st_mtime for f in stored) < killed_at  # every file from before the kill
    assert "teacher outputs: shared by the trials" in log2
    assert parent.data.tags["teacher_cache.summary"].startswith("1 of 2 trials read")  # both, across the kill
    assert parent.data.metrics["teacher_cache/hit_fraction"] == pytest.approx(0.5)
    assert not wait_for_no_processes(exclude=server_pids()), "processes left behind"

    # a second call on the finished experiment trains no teacher again: both are reused, best_config is unchanged
    again = start_cli("tune", str(space), "--resume", str(exp_path), cwd=tmp_path, log=tmp_path / "log3.txt")
    assert again.wait(timeout=300) == 0, (tmp_path / "log3.txt").read_text()[-3000:]
    log3 = (tmp_path / "log3.txt").read_text()
    assert "teacher: reusing" in log3 and f"final teacher: reusing run {final.info.run_id}" in log3
    assert len(runs_by_kind(client, "resume")["teacher"]) == 2
    assert yaml.safe_load(best_config.read_text())["teacher"]["checkpoint"] == final_ref
    assert client.get_run(parent.info.run_id).data.tags["hsakd.final_teacher"] == final_ref
    assert not wait_for_no_processes(exclude=server_pids()), "processes left behind"


def test_resources_the_cluster_can_never_give_are_refused(tmp_path):
    space = tiny_space(tmp_path)
    raw = yaml.safe_load(space.read_text())
    raw["tune"]["resources"] = {"num_workers": 4, "cpus_per_worker": 2}
    raw["teacher"] = "runs:/0123/checkpoint"  # never reached: refused before the teacher is resolved
    space.write_text(yaml.safe_dump(raw))
    done = subprocess.run([str(Path(os.sys.executable).parent / "hsakd-ray"), "tune", str(space)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "tune.resources: a trial needs 8 CPUs" in last and "Traceback" not in done.stderr
    assert not (tmp_path / "ray_results" / "resume").exists()
    assert not wait_for_no_processes(exclude=server_pids()), "processes left behind"


def test_pbt_exploits_a_donor_checkpoint_and_keeps_one_gapless_run_per_trial(tmp_path):
    """PBT end to end: 2 trials side by side, one with a learning rate too small to learn in 4 epochs, a
    perturbation after every epoch. The lagging trial restarts from the other's Train checkpoint with a perturbed
    learning rate; each trial is still one MLflow child run with epochs 1..4 and no gaps, and the value in force each
    epoch is logged as an hp/* metric."""
    space = tiny_space(tmp_path, epochs=4)
    raw = yaml.safe_load(space.read_text())
    raw["base"]["tracking"]["experiment"] = "pbt"
    raw["search"] = {"optim.lr": {"grid": [1.0e-5, 0.1]}}
    # each trial is its driver (0.05 CPU) plus its worker: two side by side fit 2 CPUs only with workers under 1 CPU
    raw["tune"] = {"name": "pbt", "max_concurrent_trials": 2, "search_alg": "grid", "final": {"run": False},
                   "resources": {"num_workers": 1, "cpus_per_worker": 0.5},
                   "scheduler": {"type": "pbt", "perturbation_interval": 1,
                                 "hyperparam_mutations": {"optim.lr": {"loguniform": [0.01, 0.2]}}}}
    space.write_text(yaml.safe_dump(raw))
    proc = start_cli("tune", str(space), cwd=tmp_path, log=tmp_path / "log.txt")
    assert proc.wait(timeout=900) == 0, (tmp_path / "log.txt").read_text()[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = runs_by_kind(client, "pbt")
    assert runs["tune"][0].info.status == "FINISHED"
    children = runs["trial"]
    assert len(children) == 2 and len({c.data.tags["hsakd.trial_id"] for c in children}) == 2
    rates = {}
    for child in children:
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/top1")]
        assert steps == [1, 2, 3, 4], steps
        history = sorted(client.get_metric_history(child.info.run_id, "hp/optim.lr"), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3, 4]
        rates[child.data.tags["hsakd.trial_id"]] = [m.value for m in history]
        in_force = sorted(client.get_metric_history(child.info.run_id, "lr"), key=lambda m: m.step)
        assert [m.value for m in in_force] == pytest.approx(rates[child.data.tags["hsakd.trial_id"]])  # constant lr
    assert any(len(set(r)) > 1 for r in rates.values()), rates  # some trial's lr was replaced mid-run
    restarts = list((tmp_path / "ray_results" / "pbt-trials").glob("*-from-*"))
    assert restarts, "no Train run was started from a donor checkpoint"
    # a restarted run continues the donor's epochs: its first checkpoint is past epoch 1 (a restart that PBT paused
    # again before its first report has none)
    restarted = {run.name: sorted(read_meta(d)["epoch"] for d in run.glob("checkpoint_*") if d.is_dir())
                 for run in restarts}
    assert any(restarted.values()) and all(e[0] > 1 for e in restarted.values() if e), restarted

    # the exploit moved weights: right after it, the lagging trial scores near its donor, far above itself before
    (lagging,) = [t for t, r in rates.items() if r[0] == pytest.approx(1.0e-5)]
    (donor,) = set(rates) - {lagging}
    top1 = {c.data.tags["hsakd.trial_id"]: {m.step: m.value for m in client.get_metric_history(c.info.run_id,
                                                                                             "val/top1")}
            for c in children}
    exploit = next(step for step, lr in enumerate(rates[lagging], start=1) if lr != pytest.approx(1.0e-5))
    print(f"exploit at epoch {exploit}: lagging {top1[lagging]}, donor {top1[donor]}")
    assert top1[lagging][exploit] > top1[lagging][exploit - 1] + 20
    assert top1[lagging][exploit] > top1[donor][exploit - 1] - 25
    # shared teacher outputs (lr is no part of the stream): the restored trial read outputs of the epoch it
    # continued at, which the donor computed while the restored Train run started
    fractions = {t: hit_fractions(client, c) for c in children for t in [c.data.tags["hsakd.trial_id"]]}
    print(f"teacher outputs read per epoch: {fractions}")
    assert all(sorted(f) == [1, 2, 3, 4] for f in fractions.values())
    assert fractions[lagging][exploit] > 0
    assert "teacher outputs: shared by the trials" in (tmp_path / "log.txt").read_text()
    assert runs["tune"][0].data.tags["teacher_cache.summary"].startswith(
        f"{sum(any(f.values()) for f in fractions.values())} of 2 trials read")
    assert not wait_for_no_processes(exclude=server_pids()), "processes left behind"


def untrained_teacher(tmp_path: Path, arch: str = "resnet8") -> str:
    """A teacher checkpoint of an untrained network, written without a Ray run: for sweeps whose point is the
    scheduling and the shared teacher outputs (its outputs, not its accuracy, matter there)."""
    import torch

    from hsakd_ray.config import config_from_dict, dump_config
    from hsakd_ray.engine import write_checkpoint
    from hsakd_ray.models import build_model

    torch.manual_seed(0)
    net = build_model(arch, 10, "all")
    meta = {"kind": "teacher", "arch": arch, "num_classes": 10, "aux_stages": list(net.aux_stages), "epoch": 0,
            "metrics": {}, "dataset": "digits"}
    cfg = config_from_dict({"data": {"name": "digits", "image_size": 16}, "teacher": {"arch": arch}})
    write_checkpoint(tmp_path / "teacher", model_state=net.state_dict(), meta=meta, config_yaml=dump_config(cfg))
    return str(tmp_path / "teacher")


def start_sweep_until_a_trial_trains(space: Path, client: MlflowClient, cwd: Path, log: Path):
    """``hsakd-ray tune SPACE`` started, returned once a trial of experiment ``resume`` has logged an epoch and is
    still training (the moment the interrupt tests send their signal)."""
    proc = start_cli("tune", str(space), cwd=cwd, log=log)
    deadline = time.monotonic() + 600
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial reported an epoch in time"
        time.sleep(1)
        exp = client.get_experiment_by_name("resume")
        trials = client.search_runs([exp.experiment_id], "tags.`hsakd.kind` = 'trial'") if exp else []
        if any(t.info.status == "RUNNING" and client.get_metric_history(t.info.run_id, "val/top1") for t in trials):
            return proc


def small_space(tmp_path: Path, name: str, search: dict, teacher: str | None = None, epochs: int = 2,
                **tune_keys) -> Path:
    """A sweep of CE-only students (no teacher to train): the quickest real sweep, 1-CPU trials one at a time. With
    ``teacher`` (a checkpoint) the students distil from it (kd), and the trials share its outputs."""
    raw = {
        "base": {"data": {"name": "digits", "image_size": 16, "val_fraction": 0.1},
                 "student": {"arch": "resnet8", "aux_stages": []}, "distill": {"method": "ce"},
                 "optim": {"lr": 0.1, "schedule": "constant", "milestones": []},
                 "train": {"epochs": epochs, "batch_size": 64}, "ray": {"max_failures": 0},
                 "tracking": {"experiment": name}},
        "search": search,
        "tune": {"name": name, "max_concurrent_trials": 1, "resources": {"num_workers": 1, "cpus_per_worker": 1},
                 "final": {"run": False}, **tune_keys},
    }
    if teacher is not None:
        raw["base"]["distill"]["method"] = "kd"
        raw["base"]["teacher"] = {"arch": "resnet8"}
        raw["teacher"] = {"checkpoint": teacher}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_asha_stops_a_trial_below_the_rung_and_the_best_trial_is_the_top_scorer(tmp_path):
    """Two trials one after the other (kd from an untrained teacher, sharing its outputs), the second with a learning
    rate too small to learn: at ASHA's rung (epoch 2; measured: the first trial's val/top1 is 46.9 after epoch 1,
    49.7 after epoch 2, the second's 9.0 and 9.7) it scores below the first trial's value there, so ASHA stops it:
    KILLED with ``stopped_by``, two of three epochs logged. The experiment's best trial is the first one, and
    best_config.yaml carries its learning rate."""
    space = small_space(tmp_path, "asha", {"optim.lr": {"grid": [0.1, 1.0e-6]}}, untrained_teacher(tmp_path),
                        epochs=3, search_alg="grid",
                        scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 2})
    proc = start_cli("tune", str(space), cwd=tmp_path, log=tmp_path / "log.txt")
    assert proc.wait(timeout=900) == 0, (tmp_path / "log.txt").read_text()[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = runs_by_kind(client, "asha")
    (parent,) = runs["tune"]
    trials = {c.data.params["search.optim.lr"]: c for c in runs["trial"]}
    assert set(trials) == {"0.1", "1e-06"}
    slow, fast = trials["1e-06"], trials["0.1"]
    assert fast.info.status == "FINISHED" and "stopped_by" not in fast.data.tags
    assert slow.info.status == "KILLED" and slow.data.tags["stopped_by"] == "asha"
    assert sorted(m.step for m in client.get_metric_history(slow.info.run_id, "val/top1")) == [1, 2]
    assert best_top1(client, fast) > best_top1(client, slow)
    assert assert_best_trial(client, parent, list(trials.values())) is fast
    best = yaml.safe_load((tmp_path / "ray_results" / "asha" / "results" / "best_config.yaml").read_text())
    assert_holds_sampled_values(best, fast)
    assert best["optim"]["lr"] == 0.1
    # shared teacher outputs: the trial ASHA stopped read every batch the first trial computed
    print("val/top1:", {lr: sorted((m.step, m.value) for m in client.get_metric_history(t.info.run_id, "val/top1"))
                        for lr, t in trials.items()})
    assert hit_fractions(client, fast) == {1: 0.0, 2: 0.0, 3: 0.0}
    assert hit_fractions(client, slow) == {1: 1.0, 2: 1.0} and slow.data.tags["teacher_cache.shared"] == "read"
    assert parent.data.tags["teacher_cache.summary"].startswith("1 of 2 trials read")
    # the given teacher's config has no validation split: it may have trained on the images the trials rank on
    assert parent.data.tags["hsakd.teacher_saw_validation"] == "true"
    assert "warning: the tuning teacher" in (tmp_path / "log.txt").read_text()
    assert not wait_for_no_processes(exclude=server_pids()), "processes left behind"


def test_failed_trials_are_failed_with_their_error_and_so_is_the_sweep(tmp_path):
    """A trial whose Train run cannot start (its storage is a file, not a directory) ends FAILED with the exception
    as tag ``error``; with no trial reporting the metric the sweep's parent run is FAILED too, and the command fails."""
    space = small_space(tmp_path, "broken", {"optim.lr": {"choice": [0.1]}})
    (tmp_path / "ray_results").mkdir()
    (tmp_path / "ray_results" / "broken-trials").write_text("not a directory")
    proc = start_cli("tune", str(space), cwd=tmp_path, log=tmp_path / "log.txt")
    code = proc.wait(timeout=900)
    log = (tmp_path / "log.txt").read_text()
    assert code not in (0, None), log[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = runs_by_kind(client, "broken")
    (parent,), (failed,) = runs["tune"], runs["trial"]
    print("trial error:", failed.data.tags.get("error"), "| parent error:", parent.data.tags.get("error"))
    assert failed.info.status == "FAILED"
    assert re.search(r"(FileExists|NotADirectory|FileNotFound)Error", failed.data.tags["error"])
    assert parent.info.status == "FAILED"
    assert parent.data.tags["error"].startswith("RuntimeError: no trial reported val/top1; see ")
    assert not wait_for_no_processes(exclude=server_pids()), "processes left behind"


def test_optuna_search_end_to_end(tmp_path):
    """search_alg optuna (the optional extra) samples each trial's value from the space and the sweep finishes."""
    pytest.importorskip("optuna")
    space = small_space(tmp_path, "optuna", {"optim.lr": {"loguniform": [0.01, 0.2]},
                                             "distill.temperature": {"quniform": [1.0, 4.0, 0.5]}},
                        untrained_teacher(tmp_path), epochs=1, search_alg="optuna", num_samples=2)
    proc = start_cli("tune", str(space), cwd=tmp_path, log=tmp_path / "log.txt")
    assert proc.wait(timeout=900) == 0, (tmp_path / "log.txt").read_text()[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = runs_by_kind(client, "optuna")
    (parent,) = runs["tune"]
    assert parent.info.status == "FINISHED" and parent.data.params["tune.search_alg"] == "optuna"
    assert len(runs["trial"]) == 2 and all(c.info.status == "FINISHED" for c in runs["trial"])
    rates = [float(c.data.params["search.optim.lr"]) for c in runs["trial"]]
    temperatures = [float(c.data.params["search.distill.temperature"]) for c in runs["trial"]]
    assert all(0.01 <= r <= 0.2 for r in rates) and len(set(rates)) == 2
    assert all(t in (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0) for t in temperatures)
    for child in runs["trial"]:  # the sampled value is the one the trial trained with
        assert child.data.params["optim.lr"] == child.data.params["search.optim.lr"]
    # shared teacher outputs (kd from one teacher): the second trial read the first one's
    assert sorted(hit_fractions(client, c)[1] for c in runs["trial"]) == [0.0, 1.0]
    assert parent.data.tags["teacher_cache.summary"].startswith("1 of 2 trials read")
    # the given teacher's config has no validation split: it may have trained on the images the trials rank on
    assert parent.data.tags["hsakd.teacher_saw_validation"] == "true"
    assert "warning: the tuning teacher" in (tmp_path / "log.txt").read_text()
    exp_path = tmp_path / "ray_results" / "optuna"  # Tune saved a Searcher's state, not the random generator's
    assert list(exp_path.glob("searcher-state-*.pkl")) and not list(exp_path.glob("basic-variant-state-*"))
    assert not wait_for_no_processes(exclude=server_pids()), "processes left behind"


def steps_of_every_metric(client: MlflowClient, run) -> dict[str, list[int]]:
    return {key: [m.step for m in client.get_metric_history(run.info.run_id, key)] for key in run.data.metrics}


def test_ctrl_c_marks_the_sweep_killed_and_resume_from_a_relative_path_finishes_the_same_runs(tmp_path):
    """Issue 11.2/11.3: SIGINT while a trial trains exits 130 with the parent and the unfinished trial KILLED and
    every epoch the trial's checkpoints hold in MLflow; ``--resume ray_results/resume`` (relative, as
    docs/fault-tolerance.md writes it) finishes the same runs with no metric step logged twice in any run."""
    from ray.train import Result

    from hsakd_ray.tracking.epoch_logger import REPORTED_EPOCHS_FILE

    epochs = 4
    space = tiny_space(tmp_path, epochs=epochs)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = start_sweep_until_a_trial_trains(space, client, tmp_path, tmp_path / "log1.txt")
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=300)
    stopped_after = time.monotonic() - sent
    log1 = (tmp_path / "log1.txt").read_text()
    assert code == 130, log1[-3000:]
    assert "--resume" in log1 and "hsakd-ray: interrupted" in log1
    print(f"SIGINT to exit: {stopped_after:.1f} s")

    runs = runs_by_kind(client, "resume")
    (parent,), (teacher,) = runs["tune"], runs["teacher"]  # the final run's teacher comes after the sweep
    assert parent.info.status == "KILLED" and teacher.info.status == "FINISHED"
    interrupted = [t for t in runs["trial"] if t.info.status != "FINISHED"]
    assert interrupted and all(t.info.status == "KILLED" for t in interrupted)  # none left RUNNING
    for trial in interrupted:  # every epoch its latest checkpoint made durable is in MLflow
        result = Result.from_path(str(tmp_path / "ray_results" / "resume-trials" / trial.data.tags["hsakd.trial_id"]))
        with result.checkpoint.as_directory() as ckpt:
            durable = max(int(m["epoch"]) for m in yaml.safe_load((Path(ckpt) / REPORTED_EPOCHS_FILE).read_text()))
        steps = [m.step for m in client.get_metric_history(trial.info.run_id, "val/top1")]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= durable, (steps, durable)
    assert not wait_for_no_processes(exclude=server_pids(), timeout=60), "processes left behind"

    resumed = start_cli("tune", str(space), "--resume", "ray_results/resume", cwd=tmp_path, log=tmp_path / "log2.txt")
    assert resumed.wait(timeout=900) == 0, (tmp_path / "log2.txt").read_text()[-3000:]
    runs = runs_by_kind(client, "resume")
    assert [r.info.run_id for r in runs["tune"]] == [parent.info.run_id]
    teachers = {r.data.tags["hsakd.run_name"]: r.info.status for r in runs["teacher"]}
    assert teachers == {"resume-teacher": "FINISHED", "resume-final-teacher": "FINISHED"}  # each trained once
    assert len(runs["trial"]) == 2 and runs["tune"][0].info.status == "FINISHED"
    for child in runs["trial"]:
        assert child.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val/top1")] == list(range(1, epochs + 1))
    for run in [*runs["tune"], *runs["teacher"], *runs["trial"]]:
        for key, steps in steps_of_every_metric(client, run).items():
            assert len(steps) == len(set(steps)), f"{run.info.run_name}: {key} logged twice at a step: {steps}"
    # shared teacher outputs across the interrupt: the trial that had not started read every batch of every epoch,
    # and the parent's summary counts both trials
    fractions = [hit_fractions(client, c) for c in runs["trial"]]
    print(f"teacher outputs read per epoch: {fractions}")
    assert {e: 1.0 for e in range(1, epochs + 1)} in fractions
    assert re.match(r"[12] of 2 trials read", client.get_run(parent.info.run_id).data.tags["teacher_cache.summary"])
    assert not wait_for_no_processes(exclude=server_pids()), "processes left behind"
