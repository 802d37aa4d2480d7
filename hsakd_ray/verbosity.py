"""How much the console shows. By default: hsakd-ray's own lines (a progress line per job epoch, the sweep's table,
warnings, errors, where results are); Ray's INFO logs, its worker output and MLflow's "View run" lines are off.
``-v`` brings Ray's own output back. Set once by the CLI, read by whoever starts Ray or Tune."""
from __future__ import annotations

import logging
import os

ENV = "HSAKD_RAY_VERBOSE"


def configure(verbose: bool) -> None:
    os.environ[ENV] = "1" if verbose else "0"
    if not verbose:
        # our own lines carry the UI address (with the runs view); MLflow's would repeat it for every run closed
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
        # Tune's new output engine prints its configuration box and paths even at verbose=0; the legacy one is silent
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in ("ray", "ray.tune", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def verbose() -> bool:
    """True with ``-v`` (or HSAKD_RAY_VERBOSE=1); a library caller that never configured gets Ray's output."""
    return os.environ.get(ENV, "1") != "0"


def ray_logging_level() -> int:
    return logging.INFO if verbose() else logging.WARNING
