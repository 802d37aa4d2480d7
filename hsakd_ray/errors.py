"""The errors a user can act on. The CLI prints these as one line with exit code 2; anything else is a bug.

Importable from every layer (no dependencies). Each subclass names where the problem lies; the ``ValueError`` /
``FileNotFoundError`` bases keep older ``except`` clauses and tests working.
"""
from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")


class UserError(Exception):
    """Bad input or an unusable environment, explained in one line that says what is allowed or what to do."""


class ConfigError(UserError, ValueError):
    """A config file, override or search space that does not fit the schema or the job."""


class CheckpointError(UserError, ValueError):
    """A checkpoint (path, runs:/, models:/) that is missing, unreadable or does not fit the job."""


class DataError(UserError, ValueError):
    """A dataset that cannot be used as configured (classes differ, too few images for a batch, unknown name)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset directory or file that does not exist."""


class TrainingDiverged(UserError, FloatingPointError):
    """A loss that became NaN or infinite: the run cannot recover from it (lower the learning rate, check the data)."""


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be used (unknown scheme, unreachable server, unwritable path)."""


class ClusterError(UserError, RuntimeError):
    """Ray (local or a cluster) cannot run the job as asked: resources it can never give, an address it cannot join."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, Slurm and Kubernetes send, often to the whole process group): an interrupt like
    Ctrl-C, runs closed KILLED and resumable, but exit code 143 instead of 130."""


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour and cursor codes (Ray colours its error messages)."""
    return _ANSI.sub("", text)


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` as one plain line: colour codes removed, lines joined, cut at ``limit`` characters."""
    flat = " ".join(part.strip() for part in strip_ansi(str(text)).splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."
