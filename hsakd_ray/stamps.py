"""Start-up timestamps for benchmarks/trial_startup.py: with ``HSAKD_STARTUP_STAMPS=DIR`` in the environment (Ray's
processes inherit it), each process appends ``{"phase", "label", "t", "pid"}`` lines to ``DIR/<pid>.jsonl``; unset,
a stamp costs one environment lookup. Standard library only: the engine may stamp too."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "HSAKD_STARTUP_STAMPS"
_label = ""  # this process's trial (its Tune trial id / Train run name), set once known


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def set_label(label: str) -> None:
    global _label
    _label = label


def process_started() -> float:
    """This process's start, in ``time.time()`` seconds (Linux: from /proc; elsewhere: now)."""
    try:
        ticks = float(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])  # btime would round to whole seconds
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


def stamp(phase: str, t: float | None = None, label: str | None = None) -> None:
    """Record that ``phase`` was reached (at ``t``, default now) by this process's trial (or ``label``)."""
    root = os.environ.get(ENV)
    if not root:
        return
    line = json.dumps({"phase": phase, "label": _label if label is None else label,
                       "t": time.time() if t is None else t, "pid": os.getpid()})
    with open(Path(root) / f"{os.getpid()}.jsonl", "a") as f:
        f.write(line + "\n")


def read_stamps(root: str | Path) -> list[dict]:
    """Every stamp written under ``root``, oldest first."""
    found = []
    for file in Path(root).glob("*.jsonl"):
        found += [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return sorted(found, key=lambda s: s["t"])
