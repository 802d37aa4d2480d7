"""One sweep per experiment directory (issue 27, case 6): a second sweep while one runs is refused at once, naming the
holder, before the tracking store is opened (two sweeps on a fresh directory once raced to create its schema); a
holder that is gone is taken over with a note. Real processes and real files."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hsakd_ray.cli import main
from hsakd_ray.config import ConfigError
from hsakd_ray.tune.lock import STALE_AFTER_S, hold_experiment, read_holder

QUICKSTART = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"
HOLD = ("import sys; from hsakd_ray.tune.lock import hold_experiment; lock = hold_experiment(sys.argv[1], 'x'); "
        "print('held', flush=True); sys.stdin.read(); lock.release()")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("hsakd-ray: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture()
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path/ray_results/quickstart`` (a sweep running there)."""
    exp = tmp_path / "ray_results" / "quickstart"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(exp)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.stdin.close()
    proc.wait(timeout=30)


def space_file(tmp_path: Path) -> Path:
    """The quickstart whose data is missing: an unlocked sweep would be refused for it only after the lock's turn."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["base"]["data"] = {"name": "imagefolder", "train_root": str(tmp_path / "no_data"), "val_fraction": 0.1}
    raw["tune"]["name"] = "quickstart"
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("started", [True, False], ids=["running", "fresh-directory"])
def test_a_second_sweep_on_a_held_experiment_is_refused_naming_the_holder(tmp_path, capsys, monkeypatch, holder,
                                                                           started):
    if started:
        (tmp_path / "ray_results" / "quickstart").mkdir(parents=True)  # what the running sweep's Tune wrote
    db = tmp_path / "mlflow.db"
    monkeypatch.chdir(tmp_path)
    assert main(["tune", str(space_file(tmp_path)), "--tracking-uri", f"sqlite:///{db}"]) == 2
    err = one_line_error(capsys)
    assert f"in use by another sweep (pid {holder.pid} on {socket.gethostname()}, started " in err
    assert not db.exists()  # refused before the store was opened: no schema created by two processes at once
    holder.stdin.close()
    holder.wait(timeout=30)
    assert not (tmp_path / "ray_results" / "quickstart.lock").exists()  # released when the holder ended


def write_lock(path: Path, pid: int, host: str, age_s: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host, "started": "2026-01-01 00:00:00 UTC"}))
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_note(tmp_path, capsys):
    gone = subprocess.Popen(["true"])
    gone.wait()
    exp = str(tmp_path / "ray_results" / "sweep")
    write_lock(Path(exp + ".lock"), gone.pid, socket.gethostname())
    lock = hold_experiment(exp, "sweep")
    out = capsys.readouterr().out
    assert f"taking over the lock of a sweep that ended without releasing it (pid {gone.pid} on " in out
    assert f"process {gone.pid} is gone" in out
    assert read_holder(lock.path).pid == os.getpid()
    lock.release()
    assert not lock.path.exists()


def test_another_hosts_lock_holds_while_its_heartbeat_is_fresh(tmp_path, capsys):
    exp = str(tmp_path / "ray_results" / "sweep")
    write_lock(Path(exp + ".lock"), 1, "other-node")
    with pytest.raises(ConfigError, match="in use by another sweep \\(pid 1 on other-node, started 2026-01-01"):
        hold_experiment(exp, "sweep")
    write_lock(Path(exp + ".lock"), 1, "other-node", age_s=STALE_AFTER_S + 60)
    lock = hold_experiment(exp, "sweep")
    assert "(pid 1 on other-node, started 2026-01-01 00:00:00 UTC: no heartbeat for" in capsys.readouterr().out
    lock.release()
