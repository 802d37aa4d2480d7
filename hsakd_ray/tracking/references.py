"""Turn a checkpoint reference (local path, ``runs:/RUN_ID/PATH``, ``models:/NAME/VERSION``) into a local directory."""
from __future__ import annotations

from pathlib import Path

from .store import TrackingError

CHECKPOINT_ARTIFACT = "checkpoint"


def is_mlflow_reference(ref: str) -> bool:
    return ref.startswith(("runs:/", "models:/"))


def resolve_checkpoint(ref: str, tracking_uri: str, cache_dir: str | Path) -> str:
    """A local checkpoint directory for ``ref``; MLflow references are downloaded under ``cache_dir``."""
    if not is_mlflow_reference(ref):
        if not (Path(ref) / "meta.json").is_file():
            raise FileNotFoundError(f"checkpoint {ref!r} not found (expected a directory with meta.json, "
                                    "runs:/RUN_ID/checkpoint or models:/NAME/VERSION)")
        return str(Path(ref).resolve())
    import mlflow
    from mlflow.exceptions import MlflowException

    target = Path(cache_dir) / ref.replace(":/", "_").replace("/", "_")
    target.mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(target), tracking_uri=tracking_uri)
    except MlflowException as exc:
        raise TrackingError(f"cannot fetch {ref!r} from {tracking_uri}: {exc.message.splitlines()[0]}") from None
    local = Path(local)
    if not (local / "meta.json").is_file() and (local / CHECKPOINT_ARTIFACT / "meta.json").is_file():
        local = local / CHECKPOINT_ARTIFACT
    if not (local / "meta.json").is_file():
        raise FileNotFoundError(f"{ref!r} does not hold an hsakd-ray checkpoint (no meta.json)")
    return str(local)


def register_checkpoint(run_id: str, name: str, tracking_uri: str) -> str:
    """Register the run's checkpoint artifact as a model version; returns ``models:/NAME/VERSION``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        client.create_registered_model(name)
    except Exception:  # already registered: add a version
        pass
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri}/{CHECKPOINT_ARTIFACT}"
    version = client.create_model_version(name, source, run_id=run_id)
    return f"models:/{name}/{version.version}"
