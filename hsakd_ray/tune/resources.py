"""What Tune reserves for one trial (its driver's share; the Train workers reserve their own). Its own module, light,
so a trial's process and the pre-Ray checks both read it without importing the other's dependencies."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .space import SearchSpace

DRIVER_CPU = 0.05  # a trial function only drives a Train run: a small CPU share, so Train workers get the cores


def trial_resources(space: SearchSpace) -> dict:
    """Tune's reservation for a trial: its driver's CPU share."""
    return {"cpu": DRIVER_CPU}
