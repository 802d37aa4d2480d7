"""Shared fixtures: a real MLflow tracking server on 127.0.0.1, tiny job configs, the CLI as a subprocess, and a
session-wide check that no test leaves a process behind.

Every process a test starts (Ray clusters, CLI drivers, the MLflow server) inherits ``HSAKD_TEST_SESSION`` from
this process's environment, so leftovers are found by that mark and never confused with other users' processes.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from hsakd_ray import process_marks
from hsakd_ray.cluster.local import free_port
from hsakd_ray.process_marks import alive

SESSION_MARK = "HSAKD_TEST_SESSION"
os.environ.setdefault(SESSION_MARK, uuid.uuid4().hex)
os.environ.pop("RAY_ADDRESS", None)  # a test's Ray is its own, never a cluster that happens to be running here
# On a shared, loaded machine a Train worker process can take over Ray Train's default 60 s to start (seen with a
# load average of 15 on 2 cores); the run then retries the start forever. Inherited by every Ray process a test starts.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")

BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- processes

def marked_processes(exclude: set[int] = frozenset()) -> dict[int, str]:
    """Live processes started by this test session (pid -> command line), found by the session mark."""
    found = process_marks.marked_processes(SESSION_MARK, os.environ[SESSION_MARK])
    return {pid: cmdline for pid, (_, cmdline) in found.items() if pid not in exclude}


def wait_for_no_processes(exclude: set[int] = frozenset(), timeout: float = 30.0) -> dict[int, str]:
    """Poll until no marked process is left (Ray's processes take a few seconds to exit); returns what remains."""
    deadline = time.monotonic() + timeout
    while True:
        left = marked_processes(exclude)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def descendants(pid: int) -> set[int]:
    """All live descendants of ``pid`` (from /proc, no psutil needed; the package never needs this walk)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


@pytest.fixture(scope="session", autouse=True)
def no_processes_left_behind():
    """After the whole session: every process a test started has exited."""
    yield
    if "ray" in sys.modules:
        import ray

        ray.shutdown()  # a Ray instance some test started in this process ends with the session, not after it
    left = wait_for_no_processes()
    assert not left, f"processes left behind by the tests: {left}"


# ---------------------------------------------------------------- MLflow tracking server

_server_pids: set[int] = set()


def server_pids() -> set[int]:
    """The running MLflow server's processes (session-scoped: a module's leftover check leaves them out)."""
    return set().union(*({pid} | descendants(pid) for pid in _server_pids if alive(pid)))


def wait_for_health(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {process.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"mlflow server at {url} not healthy after {timeout:.0f} s")


@contextlib.contextmanager
def mlflow_server_on(backend_uri: str, artifact_root: Path, log_path: Path):
    """``mlflow server`` over ``backend_uri`` on a free port of 127.0.0.1, not yet waited for; yields (process, url)
    and stops it by its pid, with its web workers, at the end. Started in its own session, so the server and its
    workers form one process group with the server's pid."""
    port = free_port()
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri,
         "--default-artifact-root", str(artifact_root), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    _server_pids.add(process.pid)
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        group = descendants(process.pid) | {process.pid}
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        deadline = time.monotonic() + 10
        while any(alive(p) for p in group) and time.monotonic() < deadline:
            time.sleep(0.2)
        _server_pids.discard(process.pid)
        assert not [p for p in group if alive(p)], "mlflow server processes survived SIGTERM"


@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory):
    """A real ``mlflow server`` (sqlite backend, local artifact root) started without waiting for it: a module can
    request this early so the server boots (its database migrations take tens of seconds) while other tests run."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server_on(f"sqlite:///{root / 'server.db'}", root / "artifacts", root / "server.log") as started:
        yield started


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process) -> str:
    """The URI of a real, healthy MLflow tracking server on 127.0.0.1."""
    process, url = mlflow_server_process
    wait_for_health(url, process)
    return url


# ---------------------------------------------------------------- configs and the CLI

def tiny_config(**sections: dict) -> dict:
    """The smallest real job: resnet8 at 16 px on synthetic data, 2 CPU workers; ``sections`` override keys."""
    cfg = {
        "data": {"name": "synthetic", "image_size": 16, "synthetic_train_size": 256, "synthetic_test_size": 64,
                 "synthetic_classes": 10},
        "teacher": {"arch": "resnet8", "aux_stages": "all"},
        "student": {"arch": "resnet8", "aux_stages": "all"},
        "optim": {"lr": 0.05, "schedule": "cosine", "milestones": []},
        "train": {"epochs": 2, "batch_size": 32, "seed": 0},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1},
        "ray": {"max_failures": 2},
        "tracking": {"experiment": "tests"},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def write_config(path: str | Path, cfg: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start_cli(*args: str, cwd: str | Path, log: str | Path) -> subprocess.Popen:
    """``hsakd-ray ARGS`` as a child process, stdout and stderr to the file ``log`` (a pipe could fill and block)."""
    with open(log, "w") as out:
        return subprocess.Popen([str(BIN / "hsakd-ray"), *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                text=True)


def run_cli(*args: str, cwd: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``hsakd-ray ARGS`` to completion, output captured."""
    return subprocess.run([str(BIN / "hsakd-ray"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def cwd(tmp_path, monkeypatch) -> Path:
    """An empty working directory for a command, with no tracking URI or Ray address from the environment."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return work
