"""A distill job's chosen student, shipped: its checkpoint's deployable network (engine/deploy.py) logged to the
job's run as an MLflow 3 LoggedModel (tracking/model.py), after the run's test summary so it is linked to it."""
from __future__ import annotations

from pathlib import Path

from ..engine.checkpoint import read_meta
from ..engine.deploy import deployable_network, example_input
from ..tracking.model import log_pytorch_model


def log_student_model(client, run_id: str, checkpoint: str | Path) -> str:
    """Log the student of ``checkpoint`` to ``run_id`` as its LoggedModel; returns ``models:/MODEL_ID``."""
    meta = read_meta(checkpoint)
    metadata = {"arch": meta["arch"], "num_classes": meta["num_classes"], "dataset": meta.get("dataset"),
                "epoch": meta.get("epoch"), "input": "normalised float32 images (N, 3, H, W)",
                "output": "class logits (N, num_classes)"}
    return log_pytorch_model(client, run_id, deployable_network(checkpoint), example_input(checkpoint), metadata)
