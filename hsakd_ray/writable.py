"""Can this process write under a path? Asked before a job starts, without leaving anything behind."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def unwritable_reason(path: str | Path) -> str | None:
    """Why a directory at ``path`` cannot be created or written by this process, or None when it can.

    Probes the deepest existing ancestor by creating and removing a temporary directory there (``os.access`` says
    yes to root even on /proc): nothing is left behind, and ``path`` itself is not created."""
    target = Path(path).expanduser().absolute()
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            return "no existing parent directory"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    try:
        probe = tempfile.mkdtemp(prefix=".hsakd-write-probe-", dir=existing)
    except OSError as exc:
        return f"{existing} is not writable ({exc.strerror or type(exc).__name__})"
    os.rmdir(probe)
    return None
