"""A trained network as an MLflow 3 LoggedModel (pytorch flavour, ``pt2`` serialisation) logged inside its run.

``pt2`` is ``torch.export``'s graph archive: pickle-free (MLflow logs the pickle format with a warning about arbitrary
code at load time, and checks a pt2 archive for pickle payloads before loading it), self-contained (no hsakd-ray code
is needed to load or serve it), and served by the pyfunc flavour, so ``mlflow.pytorch.load_model`` and ``mlflow models
predict`` run it. The batch dimension stays dynamic (the example has 2 rows); the image size is the trained one.

The LoggedModel is listed by ``mlflow.search_logged_models``, in the experiment's Models tab and in the run's "Logged
models"; the run's step-0 metrics at logging time (``test/top1_last`` ...) are linked to it. ``runs:/RUN_ID/NAME``
resolves to it too. The registry (``tracking.register_model``) points at it (references.register_checkpoint)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

MODEL_NAME = "student"  # the LoggedModel of a distill job's student
SERIALIZATION = "pt2"


@contextmanager
def tracking_to(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` for a while: the fluent API (``log_model``) and the registry's
    lookup of a ``models:/MODEL_ID`` source read it, not a client's URI."""
    import mlflow
    from mlflow.tracking import is_tracking_uri_set

    previous = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


@contextmanager
def inside_run(client, run_id: str) -> Iterator[None]:
    """The run as MLflow's active run in this process (what ``mlflow.<flavour>.log_model`` logs into), tracking to
    ``client``'s store; afterwards its status is what it was (its owner, runs.tracked_run, closes it)."""
    import mlflow

    status = client.get_run(run_id).info.status
    with tracking_to(client.tracking_uri):
        try:
            with mlflow.start_run(run_id=run_id):
                yield
        finally:
            client.update_run(run_id, status=status)  # start_run's end closed it; tracked_run owns the final status


def log_pytorch_model(client, run_id: str, net, example, metadata: dict | None = None, name: str = MODEL_NAME) -> str:
    """Log ``net`` (an ``nn.Module`` in eval mode, on the CPU) as the run's LoggedModel ``name``; returns its
    ``models:/MODEL_ID`` URI. Metrics the run holds at step 0 are linked to the model."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = net(example)
    with inside_run(client, run_id):
        info = mlflow.pytorch.log_model(
            net, name=name, serialization_format=SERIALIZATION, input_example=example.numpy(),
            signature=infer_signature(example.numpy(), output.numpy()),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"], metadata=metadata)
    return info.model_uri


def run_logged_model(client, run_id: str) -> str | None:
    """The id of the LoggedModel ``run_id`` logged (its latest), or None."""
    outputs = client.get_run(run_id).outputs
    models = outputs.model_outputs if outputs is not None else []
    return models[-1].model_id if models else None
