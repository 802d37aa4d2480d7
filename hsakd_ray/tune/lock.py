"""One sweep per experiment directory: ``EXPERIMENT_PATH.lock`` names the sweep that holds it (pid, host, start
time). It is taken before the tracking store is opened, so two sweeps started at once on one directory cannot both
create the store's schema, double every run or mix their trials; the second is refused at once, naming the first.

A holder is stale when its process is gone: on this host, its pid is not alive (or is a later process reusing the
pid); on another host, which this one cannot ask, its heartbeat (the file's modification time, touched every
``HEARTBEAT_S`` while the sweep runs) is older than ``STALE_AFTER_S``. A stale lock is taken over with a note."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ConfigError

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


def lock_path(exp_path: str) -> Path | None:
    """Where the experiment's lock lives, or None for an experiment on remote storage (s3://, gs://: no lock)."""
    if urlparse(exp_path).scheme not in ("", "file"):
        return None
    return Path(exp_path + ".lock")


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell it from a later one reusing the
    pid; None where /proc cannot say."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = process_start(pid)
    return start is None or now is None or now == start


@dataclass
class Holder:
    pid: int
    host: str
    started: str
    start_ticks: str | None = None

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"


def read_holder(path: Path) -> Holder | None:
    """The holder a lock file names; None when it is gone or unreadable (a holder still writing it, or a torn file)."""
    try:
        raw = json.loads(path.read_text())
        return Holder(int(raw["pid"]), str(raw["host"]), str(raw["started"]), raw.get("start_ticks"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stale_reason(holder: Holder | None, path: Path) -> str | None:
    """Why ``holder`` no longer holds the lock at ``path``, or None while it may still run."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return "released"
    if holder is None:
        return "unreadable lock file" if age > STALE_AFTER_S else None
    if holder.host == socket.gethostname():
        return None if _alive(holder.pid, holder.start_ticks) else f"process {holder.pid} is gone"
    return f"no heartbeat for {age:.0f} s" if age > STALE_AFTER_S else None


class ExperimentLock:
    """Held by this process from ``acquire`` to ``release``; a daemon thread keeps its heartbeat."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created: list[Path] = []

    def acquire(self, name: str) -> ExperimentLock:
        me = Holder(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    process_start(os.getpid()))
        missing = [d for d in [self.path.parent, *self.path.parent.parents] if not d.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._created = missing  # removed again by release when left empty (a refused sweep leaves nothing)
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if holder is not None and holder.pid == me.pid and holder.host == me.host:
                    return self  # this process already holds it (a sweep run twice in one process)
                why = stale_reason(holder, self.path)
                if why is None:
                    held = holder.describe() if holder else "a sweep starting now"
                    raise ConfigError(f"experiment {name!r} is in use by another sweep ({held}; lock {self.path}): "
                                      "wait for it to end, or stop it and run --resume") from None
                self._take_over(holder, why)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(vars(me), f)
            self._thread = threading.Thread(target=self._beat, name="experiment-lock", daemon=True)
            self._thread.start()
            return self
        raise ConfigError(f"could not take the lock {self.path}: other sweeps keep taking it")

    def _take_over(self, holder: Holder | None, why: str) -> None:
        """Move the stale lock aside (one atomic rename: of two sweeps taking over at once, one wins) and say so."""
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another sweep moved it first; try to create ours again
        if read_holder(aside) != holder:  # a live lock taken in the meantime was moved: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        if why != "released":
            print(f"note: taking over the lock of a sweep that ended without releasing it "
                  f"({holder.describe() if holder else 'holder unknown'}: {why})", flush=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        holder = read_holder(self.path)
        if holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname():
            self.path.unlink(missing_ok=True)
        for directory in self._created:  # deepest first; stops at the first that holds something
            try:
                directory.rmdir()
            except OSError:
                break


def hold_experiment(exp_path: str, name: str) -> ExperimentLock | None:
    """Take the experiment's lock (None on remote storage), or refuse in one line naming its holder."""
    path = lock_path(exp_path)
    if path is None:
        return None
    try:
        return ExperimentLock(path).acquire(name)
    except OSError as exc:
        raise ConfigError(f"cannot write the experiment's lock {path}: {exc.strerror or exc}") from None
