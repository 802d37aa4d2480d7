"""Pre-imported Ray workers: the job's ``runtime_env`` names ``preload`` as its ``worker_process_setup_hook``, so
each Ray worker process imports torch and the training code when it starts, in Ray's pool of idle workers, before
a trial, Train controller or Train worker is handed to it (otherwise each of them paid those imports, seconds on a
small CPU, while its trial waited).

Ray hands a pooled process only to an actor whose runtime environment is the job's: Train V2 gives its controller
and workers ``env_vars`` (the Train variables set in the driver's environment, and the controller a warning switch),
so the job's environment carries the same values, and the merged environments are equal."""
from __future__ import annotations

import os

HOOK = "hsakd_ray.train.preload.preload"
# Train V2's controller sets this in its runtime_env (DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
CONTROLLER_ENV = {"RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0"}


def preload() -> None:
    """Import what a trial's processes import anyway: Ray Train with torch, the train function and the engine."""
    import hsakd_ray.train.worker  # noqa: F401


def train_env_vars() -> dict[str, str]:
    """The env_vars Train V2 adds to its controller's and workers' runtime environments (their hash must match)."""
    try:
        from ray.train.v2._internal.constants import get_env_vars_to_propagate
    except ImportError:  # another Ray: no pooled processes for Train, nothing else lost
        return dict(CONTROLLER_ENV)
    return {**CONTROLLER_ENV, **get_env_vars_to_propagate()}


def job_runtime_env() -> dict:
    """The ``ray.init(runtime_env=...)`` of an hsakd-ray driver (``HSAKD_RAY_PRELOAD=0``: none)."""
    if os.environ.get("HSAKD_RAY_PRELOAD", "1") == "0":
        return {}
    return {"worker_process_setup_hook": HOOK, "env_vars": train_env_vars()}
