"""A trained network as an MLflow Model (pytorch flavour) with a signature and an input example, hsakd-ray's model
code packed in (``code_paths``) so ``mlflow.pytorch.load_model`` and ``mlflow models predict`` need nothing but
torch. The registry (``tracking.register_model``) points at it (references.register_checkpoint)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from .references import MODEL_ARTIFACT

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # hsakd_ray/: the classes the pickled network is made of


def save_pytorch_model(net, example, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``net`` (an ``nn.Module`` in eval mode) as an MLflow Model at the new directory ``path``."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = net(example)
    mlflow.pytorch.save_model(
        net, str(path), code_paths=[str(PACKAGE_DIR)], serialization_format="pickle",
        signature=infer_signature(example.numpy(), output.numpy()), input_example=example.numpy(),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pyyaml"], metadata=metadata)
    return Path(path)


def log_pytorch_model(client, run_id: str, net, example, metadata: dict | None = None) -> str:
    """Log ``net`` to the run as the artifact ``model``; returns ``runs:/RUN_ID/model``."""
    with tempfile.TemporaryDirectory() as tmp:
        local = save_pytorch_model(net, example, Path(tmp) / MODEL_ARTIFACT, metadata)
        client.log_artifacts(run_id, str(local), artifact_path=MODEL_ARTIFACT)
    return f"runs:/{run_id}/{MODEL_ARTIFACT}"
