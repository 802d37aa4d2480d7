"""Find and stop exactly the processes one local cluster started, never anyone else's.

Every process ``cluster up`` starts carries ``HSAKD_CLUSTER_ID=<id>`` in its environment, and Ray passes its
environment on to everything it spawns (raylets, agents, workers). Ray's own daemons also name the cluster's temp
dir on their command line. Either mark identifies a process as ours; ``ray stop`` is never used, because it stops
every Ray process on the machine.
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


def cluster_processes(cluster_id: str, temp_dir: str | None = None) -> dict[int, str]:
    """Live processes of one cluster (pid -> command line), by environment mark or by temp dir on the command line."""
    mark = f"{CLUSTER_MARK}={cluster_id}".encode()
    needle = f"{temp_dir.rstrip('/')}/session_".encode() if temp_dir else None  # Ray daemons' log dirs
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        environ, cmdline = _read(entry / "environ"), _read(entry / "cmdline")
        if cmdline is None:
            continue
        ours = (environ is not None and mark in environ.split(b"\0")) or (needle is not None and needle in cmdline)
        if ours and alive(int(entry.name)):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def _signal(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_cluster_processes(cluster_id: str, temp_dir: str | None, first: list[int] = (),
                           grace_s: float = 15.0) -> dict[int, str]:
    """SIGTERM ``first`` (e.g. the worker nodes' raylets), then every process of the cluster; SIGKILL what is left
    after ``grace_s``. Returns what survived even SIGKILL (normally nothing)."""
    _signal([p for p in first if alive(p)], signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        left = cluster_processes(cluster_id, temp_dir)
        if not left:
            return {}
        _signal(left, signal.SIGTERM)  # new ones may have been spawned while the first went down
        time.sleep(0.5)
    left = cluster_processes(cluster_id, temp_dir)
    _signal(left, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = cluster_processes(cluster_id, temp_dir)
    return left
