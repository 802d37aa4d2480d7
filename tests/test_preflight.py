"""The checks that run before a job or sweep starts (issue 11): each refuses in one line and writes nothing; the
run lifecycle (12.6) ends every run FINISHED, FAILED or KILLED; a killed driver's Ray processes are found again."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hsakd_ray.config import DataConfig
from hsakd_ray.data.checks import check_data
from hsakd_ray.errors import CheckpointError, ClusterError, DataError, DataNotFoundError, TrackingError, UserError
from hsakd_ray.process_marks import alive, start_time
from hsakd_ray.tracking import runs as R
from hsakd_ray.tracking.references import check_reference
from hsakd_ray.tracking.store import check_tracking_uri
from hsakd_ray.train.job_checks import check_local_resources, cpu_count, shortfall
from hsakd_ray.train.ray_session import DRIVER_MARK, SESSION_OWNER_FILE, orphaned_ray_processes
from hsakd_ray.writable import unwritable_reason

# ---------------------------------------------------------------- paths and the tracking store


def test_unwritable_reason_probes_without_creating(tmp_path):
    target = tmp_path / "a" / "b"
    assert unwritable_reason(target) is None
    assert list(tmp_path.iterdir()) == []  # neither the path nor a probe is left behind
    assert "/proc is not writable" in unwritable_reason("/proc/nope")
    (tmp_path / "file").write_text("x")
    assert "is a file" in unwritable_reason(tmp_path / "file" / "sub")


@pytest.mark.parametrize("uri", ["foo://bar", "s3x://bucket/x"])
def test_unknown_tracking_scheme_is_refused(uri):
    with pytest.raises(TrackingError, match="unknown scheme"):
        check_tracking_uri(uri)


def test_known_tracking_schemes_pass(tmp_path):
    for uri in (f"sqlite:///{tmp_path / 'm.db'}", f"file:{tmp_path / 'runs'}", "postgresql+psycopg2://u@h/db"):
        check_tracking_uri(uri)
    assert list(tmp_path.iterdir()) == []


def test_sqlite_store_in_a_missing_or_unwritable_directory_is_refused(tmp_path):
    with pytest.raises(TrackingError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path / 'none' / 'm.db'}")
    with pytest.raises(TrackingError, match="cannot create m.db"):
        check_tracking_uri("sqlite:////proc/m.db")


def test_user_errors_share_one_base_and_keep_their_old_bases():
    from hsakd_ray.config import ConfigError
    from hsakd_ray.engine import CheckpointError as EngineCheckpointError

    assert EngineCheckpointError is CheckpointError
    for error in (ConfigError, CheckpointError, DataError, TrackingError, ClusterError):
        assert issubclass(error, UserError)
    assert issubclass(ConfigError, ValueError) and issubclass(DataNotFoundError, FileNotFoundError)


# ---------------------------------------------------------------- checkpoint references

def test_reference_checks_write_nothing_and_find_real_checkpoints(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    with pytest.raises(CheckpointError, match="does not exist yet"):
        check_reference("runs:/abc/checkpoint", uri)
    assert not (tmp_path / "store.db").exists()

    client = MlflowClient(uri)
    experiment = client.create_experiment("e")
    empty = client.create_run(experiment).info.run_id
    with pytest.raises(CheckpointError, match="does not hold an hsakd-ray checkpoint"):
        check_reference(f"runs:/{empty}/checkpoint", uri)
    with pytest.raises(CheckpointError, match="not found in"):
        check_reference("runs:/0000/checkpoint", uri)
    with pytest.raises(CheckpointError, match="not found in"):
        check_reference("models:/nobody/1", uri)

    full = client.create_run(experiment).info.run_id
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    (ckpt / "meta.json").write_text("{}")
    client.log_artifacts(full, str(ckpt), artifact_path="checkpoint")
    check_reference(f"runs:/{full}/checkpoint", uri)
    check_reference(str(ckpt), uri)
    with pytest.raises(CheckpointError, match="not found"):
        check_reference(str(tmp_path / "nothing"), uri)


# ---------------------------------------------------------------- data

def test_batch_size_is_checked_against_the_exact_training_split():
    # 100 synthetic images, 10 classes: a 10 % stratified hold-out leaves exactly 90 to train on
    cfg = DataConfig(name="synthetic", synthetic_train_size=100, val_fraction=0.1)
    assert check_data(cfg, 90) == 90
    with pytest.raises(DataError, match=r"larger than the training set \(90 images of synthetic after the "
                                         r"validation split\).*at most 90"):
        check_data(cfg, 91)


def test_imagefolder_checks_count_images_and_compare_classes(tmp_path):
    from PIL import Image

    for split, classes in (("train", ["a", "b"]), ("val", ["a", "b"])):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (4, 4)).save(tmp_path / split / name / f"{i}.png")
    cfg = DataConfig(name="imagefolder", root=str(tmp_path))
    assert check_data(cfg, 6) == 6
    with pytest.raises(DataError, match="larger than the training set"):
        check_data(cfg, 7)
    (tmp_path / "val" / "c").mkdir()
    with pytest.raises(DataError, match=r"only in val/: \['c'\]"):
        check_data(cfg, 2)
    with pytest.raises(DataNotFoundError, match="imagefolder training set not found"):
        check_data(DataConfig(name="imagefolder", root=str(tmp_path / "none")), 2)


def test_cifar_files_are_required_before_start(tmp_path):
    with pytest.raises(DataNotFoundError, match="cifar100 data not found"):
        check_data(DataConfig(name="cifar100", root=str(tmp_path)), 64)


# ---------------------------------------------------------------- resources

def test_shortfall_names_what_is_missing_and_where():
    assert shortfall({"CPU": 1}, 2, 0.0, {"CPU": 2}, None) is None
    assert shortfall({"CPU": 1}, 2, 0.05, {"CPU": 2}, None) == \
        "2 CPUs (2 workers x 1) + 0.05 for the trial driver but {where} has 2"
    assert shortfall({"CPU": 2}, 2, 0.0, {"CPU": 8}, {"CPU": 1}) == \
        "2 CPUs on one node for each worker but {where}'s largest node has 1"
    assert "1 GPU (1 worker x 1)" in shortfall({"CPU": 1, "GPU": 1}, 1, 0.0, {"CPU": 4}, None)


def test_local_resources_are_checked_against_this_machine_unless_joining(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    too_many = cpu_count() + 1
    with pytest.raises(ClusterError, match=f"needs {too_many:g} CPUs"):
        check_local_resources({"CPU": too_many}, 1, "a job", None)
    check_local_resources({"CPU": too_many}, 1, "a job", "auto")  # a cluster is checked once joined
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    check_local_resources({"CPU": too_many}, 1, "a job", None)


# ---------------------------------------------------------------- the run lifecycle

@pytest.fixture(scope="module")
def client(tmp_path_factory) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('lifecycle') / 'runs.db'}")


def status(client: MlflowClient, run_id: str) -> str:
    return client.get_run(run_id).info.status


def test_tracked_run_finishes_a_run_whose_body_returns(client):
    with R.tracked_run(client, "e", "job-ok", R.base_tags("teacher", "job-ok"), {"a.b": 1}) as run:
        assert status(client, run.run_id) == "RUNNING"
    assert status(client, run.run_id) == "FINISHED"
    assert client.get_run(run.run_id).data.params == {"a.b": "1"}


def test_tracked_run_records_a_failure_as_one_plain_line(client):
    with pytest.raises(RuntimeError), R.tracked_run(client, "e", "job-bad", R.base_tags("teacher", "job-bad")) as run:
        raise RuntimeError("\x1b[36m(TrainController pid=1)\x1b[0m worker died\n  at step 3")
    assert status(client, run.run_id) == "FAILED"
    error = client.get_run(run.run_id).data.tags["error"]
    assert error == "RuntimeError: (TrainController pid=1) worker died at step 3"


@pytest.mark.parametrize("how", ["keyboard", "sigterm"])
def test_tracked_run_marks_an_interrupt_killed_after_stopping_the_work(client, how):
    stopped, before = [], signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with R.tracked_run(client, "e", f"job-{how}", R.base_tags("teacher", f"job-{how}"),
                           on_interrupt=lambda: stopped.append(True)) as run:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises long before this ends
            raise KeyboardInterrupt
    assert stopped == [True] and status(client, run.run_id) == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before


def test_tracked_run_resumes_the_same_run(client):
    tags = R.base_tags("teacher", "job-resumed")
    with pytest.raises(KeyboardInterrupt), R.tracked_run(client, "e", "job-resumed", tags) as first:
        raise KeyboardInterrupt
    with R.tracked_run(client, "e", "job-resumed", tags, resume=True) as again:
        assert again.run_id == first.run_id and status(client, again.run_id) == "RUNNING"
    assert status(client, first.run_id) == "FINISHED"


def test_a_summary_metric_is_logged_once_per_step(client):
    run_id = client.create_run(R.get_experiment_id(client, "e")).info.run_id
    for _ in range(2):  # a sweep summarised again after --resume
        R.log_metric_once(client, run_id, "best_val/top1", 91.5)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "best_val/top1")] == [(0, 91.5)]


# ---------------------------------------------------------------- what a SIGKILLed driver leaves

SPAWN = """
import os, subprocess, sys, time
from hsakd_ray.process_marks import start_time
me = f"{os.getpid()}:{start_time(os.getpid())}"
marked = dict(os.environ, HSAKD_RAY_DRIVER=me)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=marked)  # like the GCS or raylet
# like a raylet's agent: no mark, its raylet (this process) gone, logs in a session this driver owns
session = sys.argv[1]
os.makedirs(session + "/logs", exist_ok=True)
if sys.argv[2] != "unowned":  # a session started by `ray start`: no owner file
    open(session + "/hsakd_driver", "w").write(me)
agent = dict(os.environ, RAY_RAYLET_PID=str(os.getpid()))
subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1], 'w'); time.sleep(120)",
                  session + "/logs/agent.out"], env=agent)
print("ready", flush=True)
time.sleep(120)
"""


def start_fake_driver(session: Path, owner: str = "owned") -> tuple[subprocess.Popen, set[int]]:
    driver = subprocess.Popen([sys.executable, "-c", SPAWN, str(session), owner], stdout=subprocess.PIPE, text=True)
    assert driver.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # the agent opens its log file
    children = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and alive(int(p.name))
                and (p / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(driver.pid)}
    assert len(children) == 2
    return driver, children


def stop(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_processes_of_a_sigkilled_driver_are_orphans_and_a_live_drivers_are_not(tmp_path):
    dead, dead_children = start_fake_driver(tmp_path / "ray" / "session_1_dead")
    live, live_children = start_fake_driver(tmp_path / "ray" / "session_2_live")
    foreign, foreign_children = start_fake_driver(tmp_path / "ray" / "session_3_foreign", owner="unowned")
    try:
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait()
        os.kill(foreign.pid, signal.SIGKILL)  # its agent's session has no owner file: not an hsakd driver's Ray
        foreign.wait()
        found = set(orphaned_ray_processes())
        assert dead_children <= found
        assert not (live_children & found)
        marked_foreign = {p for p in foreign_children if f"{DRIVER_MARK}=".encode() in Path(f"/proc/{p}/environ")
                          .read_bytes()}
        assert (foreign_children - marked_foreign) & found == set()  # the unmarked agent of an unowned session
        assert (tmp_path / "ray" / "session_1_dead" / SESSION_OWNER_FILE).read_text().startswith(f"{dead.pid}:")
        assert start_time(live.pid) is not None
    finally:
        for driver in (live, dead, foreign):
            driver.kill()
            driver.wait()
        stop(dead_children | live_children | foreign_children)
