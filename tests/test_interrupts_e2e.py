"""Issue 27.2/27.3/27.7/27.8 end to end: the real CLI as a subprocess on digits, a local Ray cluster and a sqlite
MLflow store. Ctrl-C while the sweep's shared teacher trains is continued by ``--resume`` (the same teacher run);
SIGTERM to the driver's whole process group (Ray's own processes included, as ``timeout``, Slurm and Kubernetes send
it) exits 143 at once with the runs KILLED and resumable; Ctrl-C on the resumed sweep leaves nothing RUNNING with
its checkpointed epochs in MLflow; a diverging trial fails with its epoch while the sweep goes on; a data error fails
a Ray job once, in one line naming the file."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, server_pids, start_cli, wait_for_no_processes
from mlflow.tracking import MlflowClient
from test_tune_e2e import runs_by_kind

from hsakd_ray.tune.sweep_checks import SNAPSHOT

pytestmark = pytest.mark.slow


def wait_until(proc: subprocess.Popen, log: Path, ready, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what}: not in time"
        time.sleep(0.5)


def epochs_logged(client: MlflowClient, run, key: str = "epoch_time") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def space_file(tmp_path: Path, name: str, search: dict, epochs: int, teacher_epochs: int | None = None,
               **base) -> Path:
    raw = {"base": {"data": {"name": "digits", "image_size": 16, "val_fraction": 0.1},
                    "student": {"arch": "resnet8", "aux_stages": []}, "distill": {"method": "ce"},
                    "optim": {"lr": 0.1, "schedule": "constant", "milestones": []},
                    "train": {"epochs": epochs, "batch_size": 64}, "ray": {"max_failures": 2},
                    "tracking": {"experiment": name}, **base},
           "search": search,
           "tune": {"name": name, "max_concurrent_trials": 1, "search_alg": "grid",
                    "resources": {"num_workers": 1, "cpus_per_worker": 1}}}
    if teacher_epochs:
        raw["base"]["distill"]["method"] = "kd"
        raw["base"]["teacher"] = {"arch": "resnet8"}
        raw["teacher"] = {"config": {"teacher": {"arch": "resnet8", "aux_stages": []},
                                     "train": {"epochs": teacher_epochs},
                                     "scaling": {"num_workers": 1, "cpus_per_worker": 1}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_ctrl_c_while_the_shared_teacher_trains_is_continued_by_resume(tmp_path):
    """Issue 27, case 2: Ctrl-C during the teacher exits 130 with the teacher run KILLED and a --resume hint; a plain
    rerun is refused before Ray starts, pointing at --resume; --resume continues the same teacher run from its
    checkpoint, then runs the trials."""
    space = space_file(tmp_path, "teach", {"optim.lr": {"grid": [0.1]}}, epochs=1, teacher_epochs=3)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    log1 = tmp_path / "log1.txt"
    proc = start_cli("tune", str(space), cwd=tmp_path, log=log1)

    def teacher_epoch_1() -> bool:
        teachers = runs_by_kind(client, "teach").get("teacher", [])
        return bool(teachers) and 1 in epochs_logged(client, teachers[0])

    wait_until(proc, log1, teacher_epoch_1, "the teacher's first epoch in MLflow")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130, log1.read_text()[-3000:]
    assert "--resume" in log1.read_text()
    (teacher,) = runs_by_kind(client, "teach")["teacher"]
    assert teacher.info.status == "KILLED"
    assert (tmp_path / "ray_results" / "teach" / SNAPSHOT).is_file()  # --resume checks the space from here on
    assert not wait_for_no_processes(exclude=server_pids(), timeout=60), "processes left behind"

    rerun = subprocess.run([str(BIN / "hsakd-ray"), "tune", str(space)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 2 and "interrupted while its teacher trained" in rerun.stderr, rerun.stderr
    assert "--resume" in rerun.stderr and "Traceback" not in rerun.stderr

    log2 = tmp_path / "log2.txt"
    resumed = start_cli("tune", str(space), "--resume", "ray_results/teach", cwd=tmp_path, log=log2)
    assert resumed.wait(timeout=900) == 0, log2.read_text()[-3000:]
    runs = runs_by_kind(client, "teach")
    tuning = [r for r in runs["teacher"] if r.data.tags["hsakd.run_name"] == "teach-teacher"]
    assert [r.info.run_id for r in tuning] == [teacher.info.run_id]  # the same MLflow run, continued
    assert tuning[0].info.status == "FINISHED" and epochs_logged(client, tuning[0]) == [1, 2, 3]
    assert [c.info.status for c in runs["trial"]] == ["FINISHED"] and runs["tune"][0].info.status == "FINISHED"
    assert not wait_for_no_processes(exclude=server_pids()), "processes left behind"


def test_sigterm_to_the_process_group_then_ctrl_c_on_the_resumed_sweep_leave_nothing_running(tmp_path):
    """Issue 27, cases 4 and 3: SIGTERM to the driver's process group (Ray's GCS and raylet die with it) exits 143
    within seconds, with the parent and the trial KILLED; --resume continues; Ctrl-C on that resumed sweep again
    leaves no run RUNNING, with every epoch the trial's checkpoints hold in MLflow."""
    from ray.train import Result

    from hsakd_ray.tracking.epoch_logger import read_reported_epochs

    epochs = 6
    space = space_file(tmp_path, "term", {"optim.lr": {"grid": [0.1]}}, epochs=epochs)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def trial_epoch(at_least: int):
        def ready() -> bool:
            trials = runs_by_kind(client, "term").get("trial", [])
            return bool(trials) and trials[0].info.status == "RUNNING" and \
                len(epochs_logged(client, trials[0])) >= at_least
        return ready

    log1 = tmp_path / "log1.txt"
    with open(log1, "w") as out:
        proc = subprocess.Popen([str(BIN / "hsakd-ray"), "tune", str(space)], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(proc, log1, trial_epoch(1), "the trial's first epoch")
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # as `timeout`, Slurm and Kubernetes do: the driver and Ray's processes
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - sent
    print(f"SIGTERM to the group: exit {code} after {took:.1f} s")
    assert code == 143, log1.read_text()[-3000:]
    assert took < 45 and "--resume" in log1.read_text()
    runs = runs_by_kind(client, "term")
    assert runs["tune"][0].info.status == "KILLED" and runs["trial"][0].info.status == "KILLED"
    assert not wait_for_no_processes(exclude=server_pids(), timeout=60), "processes left behind"

    log2 = tmp_path / "log2.txt"
    resumed = start_cli("tune", str(space), "--resume", "ray_results/term", cwd=tmp_path, log=log2)
    done_before = len(epochs_logged(client, runs["trial"][0]))
    wait_until(resumed, log2, trial_epoch(done_before + 1), "an epoch of the resumed trial")
    resumed.send_signal(signal.SIGINT)
    assert resumed.wait(timeout=300) == 130, log2.read_text()[-3000:]
    runs = runs_by_kind(client, "term")
    (trial,) = runs["trial"]
    assert [r.info.status for r in [*runs["tune"], trial]] == ["KILLED", "KILLED"]
    result = Result.from_path(str(tmp_path / "ray_results" / "term-trials" / trial.data.tags["hsakd.trial_id"]))
    with result.checkpoint.as_directory() as ckpt:
        durable = max(int(m["epoch"]) for m in read_reported_epochs(ckpt))
    steps = epochs_logged(client, trial, "val/top1")
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= durable, (steps, durable)
    assert not wait_for_no_processes(exclude=server_pids(), timeout=60), "processes left behind"


def test_a_diverging_trial_fails_with_its_epoch_and_the_sweep_goes_on(tmp_path):
    """Issue 27, case 8: lr 1e6 makes the loss NaN; that trial is FAILED with ``loss diverged at epoch k`` (no
    Train or Tune retry, though ray.max_failures is 2), the other trial finishes and is the best."""
    space = space_file(tmp_path, "nan", {"optim.lr": {"grid": [0.1, 1.0e6]}}, epochs=2)
    log = tmp_path / "log.txt"
    proc = start_cli("tune", str(space), cwd=tmp_path, log=log)
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = runs_by_kind(client, "nan")
    trials = {c.data.params["search.optim.lr"]: c for c in runs["trial"]}
    diverged, fine = trials["1000000.0"], trials["0.1"]
    print("error tag:", diverged.data.tags.get("error"))
    assert diverged.info.status == "FAILED" and "loss diverged at epoch " in diverged.data.tags["error"]
    assert "hsakd.worker_failures" not in diverged.data.tags or diverged.data.tags["hsakd.worker_failures"] == "1"
    assert fine.info.status == "FINISHED"
    assert runs["tune"][0].data.tags["best_trial_id"] == fine.data.tags["hsakd.trial_id"]
    assert not wait_for_no_processes(exclude=server_pids()), "processes left behind"


def test_an_undecodable_image_fails_a_ray_job_once_in_one_line(tmp_path):
    """Issue 27, case 9: an image that cannot be decoded fails the job at once (ray.max_failures 2: no worker-group
    restart), exit 2, one line naming the file, the run FAILED with it."""
    from PIL import Image

    for split, n in (("train", 3), ("val", 1)):
        for name in ("cat", "dog"):
            (tmp_path / "images" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (16, 16), (40 * i, 20, 30)).save(tmp_path / "images" / split / name / f"{i}.png")
    broken = tmp_path / "images" / "train" / "dog" / "2.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"name": "imagefolder", "root": str(tmp_path / "images"), "image_size": 16, "val_fraction": 0.0},
        "teacher": {"arch": "resnet8"}, "train": {"epochs": 1, "batch_size": 2},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1}, "ray": {"max_failures": 2},
        "tracking": {"experiment": "broken", "run_name": "broken"}}))
    start = time.monotonic()
    done = subprocess.run([str(BIN / "hsakd-ray"), "teacher", str(config)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    print(f"failed after {time.monotonic() - start:.1f} s: {done.stderr.strip()}")
    assert done.returncode == 2, (done.stdout + done.stderr)[-3000:]
    ours = [line for line in done.stderr.splitlines() if line.startswith("hsakd-ray: ")]
    assert len(ours) == 1 and ours[0].startswith(f"hsakd-ray: error: cannot decode image {broken}: "), done.stderr
    assert len(ours[0]) < 300 and "Traceback" not in done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = runs_by_kind(client, "broken")["teacher"]
    assert run.info.status == "FAILED" and f"cannot decode image {broken}" in run.data.tags["error"]
    assert run.data.tags.get("hsakd.worker_failures", "1") == "1"  # one failure, no restart
    assert not wait_for_no_processes(exclude=server_pids()), "processes left behind"
