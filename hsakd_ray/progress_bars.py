"""Progress bars for work that is long and otherwise silent (building an in-memory dataset, importing or fetching
checkpoints, downloading a dataset): tqdm on stderr, so it never mixes with results printed on stdout.

Shown on a terminal; off when stderr is not one (logs, CI) unless ``HSAKD_PROGRESS=1``; ``HSAKD_PROGRESS=0``
silences them everywhere."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def enabled() -> bool:
    setting = os.environ.get("HSAKD_PROGRESS")
    if setting is not None:
        return setting != "0"
    return sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``for x in progress(items, "decoding images", total=n, unit="img"):`` -- a bar while iterating."""
    if not enabled():
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)


def byte_bar(desc: str, total: int | None):
    """A bar counting bytes (``bar.update(n)``), or a do-nothing stand-in when bars are off; a context manager."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, disable=not enabled())


def step_bar(desc: str, steps: int):
    """A bar over the ``steps`` stages of one long operation (``bar.update(1)`` after each, ``bar.close()``)."""
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=desc, unit="step", file=sys.stderr, disable=not enabled())
