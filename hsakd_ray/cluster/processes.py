"""Find and stop exactly the processes one local cluster started, never anyone else's.

Every process ``cluster up`` starts carries ``HSAKD_CLUSTER_ID=<id>`` in its environment, and Ray and MLflow pass
their environment on to everything they spawn (GCS, raylets, agents, dashboard modules, workers, uvicorn), so the
mark finds exactly this cluster's processes. ``ray stop`` is never used: it stops every Ray process on the machine.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CLUSTER_MARK = "HSAKD_CLUSTER_ID"


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # exited while we looked, or not ours to read
        return None


def alive(pid: int) -> bool:
    """Running (a zombie has exited; only its parent's wait is missing)."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    return stat is not None and stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def cluster_processes(cluster_id: str) -> dict[int, str]:
    """Live processes of one cluster (pid -> command line), found by the mark in their environment."""
    mark = f"{CLUSTER_MARK}={cluster_id}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        environ, cmdline = _read(entry / "environ"), _read(entry / "cmdline")
        if cmdline is None:
            continue
        if environ is not None and mark in environ.split(b"\0") and alive(int(entry.name)):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def _signal(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_cluster_processes(cluster_id: str, grace_s: float = 3.0) -> dict[int, str]:
    """SIGTERM every process of the cluster, SIGKILL what is left after ``grace_s`` (Ray's GCS and raylets can
    take minutes to drain once their peers are gone). Returns what survived even SIGKILL (normally nothing)."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        left = cluster_processes(cluster_id)
        if not left:
            return {}
        _signal(left, signal.SIGTERM)  # again each round: processes spawned meanwhile get it too
        time.sleep(0.5)
    left = cluster_processes(cluster_id)
    _signal(left, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = cluster_processes(cluster_id)
    return left
