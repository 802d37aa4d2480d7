"""Processes found by a mark in their environment (``NAME=VALUE``), read from /proc: a child inherits its parent's
environment, so a mark set before starting something finds everything it spawned, and nothing else."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # exited while we looked, or not ours to read
        return None


def alive(pid: int) -> bool:
    """Running (a zombie has exited; only its parent's wait is missing)."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    return stat is not None and stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot): with the pid, it names one process for good."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    return stat.rsplit(b")", 1)[1].split()[19].decode() if stat else None


def marked_processes(name: str, value: str | None = None) -> dict[int, tuple[str, str]]:
    """Live processes whose environment holds ``name`` (``=value`` when given): pid -> (its value, command line)."""
    prefix = f"{name}=".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        environ, cmdline = _read(entry / "environ"), _read(entry / "cmdline")
        if environ is None or cmdline is None:
            continue
        mark = next((item[len(prefix):].decode(errors="replace") for item in environ.split(b"\0")
                     if item.startswith(prefix)), None)
        if mark is None or (value is not None and mark != value) or not alive(int(entry.name)):
            continue
        found[int(entry.name)] = (mark, cmdline.replace(b"\0", b" ").decode(errors="replace").strip())
    return found


def open_files(pid: int) -> list[str]:
    """Paths of the files ``pid`` holds open (empty when it is gone or not ours to inspect)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return []
    paths = []
    for fd in fds:
        try:
            paths.append(os.readlink(fd))
        except OSError:
            continue
    return paths


def signal_all(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_processes(find, grace_s: float = 3.0) -> dict[int, tuple[str, str]]:
    """SIGTERM what ``find()`` returns, again each round (processes spawned meanwhile get it too), SIGKILL what is
    left after ``grace_s``. Returns what survived even SIGKILL (normally nothing)."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        left = find()
        if not left:
            return {}
        signal_all(left, signal.SIGTERM)
        time.sleep(0.5)
    left = find()
    signal_all(left, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = find()
    return left
