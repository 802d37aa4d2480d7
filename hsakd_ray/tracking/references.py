"""Turn a checkpoint reference (local path, ``runs:/RUN_ID/PATH``, ``models:/NAME/VERSION``) into a local directory."""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, TrackingError
from .model import run_logged_model, tracking_to
from .store import store_exists

CHECKPOINT_ARTIFACT = "checkpoint"
MODEL_ARTIFACT = "model"  # where runs logged before LoggedModels kept the student's MLflow Model


def is_mlflow_reference(ref: str) -> bool:
    return ref.startswith(("runs:/", "models:/"))


def resolve_checkpoint(ref: str, tracking_uri: str, cache_dir: str | Path) -> str:
    """A local checkpoint directory for ``ref``; MLflow references are downloaded under ``cache_dir``."""
    check_reference(ref, tracking_uri)
    if not is_mlflow_reference(ref):
        return str(Path(ref).resolve())
    import mlflow
    from mlflow.exceptions import MlflowException

    target = Path(cache_dir) / ref.replace(":/", "_").replace("/", "_").replace("@", "_")
    target.mkdir(parents=True, exist_ok=True)
    try:
        source = model_version_source(ref, tracking_uri) if ref.startswith("models:/") else ref
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(target),
                                                    tracking_uri=tracking_uri)
    except MlflowException as exc:
        raise TrackingError(f"cannot fetch {ref!r} from {tracking_uri}: {exc.message.splitlines()[0]}") from None
    local = Path(local)
    if not (local / "meta.json").is_file() and (local / CHECKPOINT_ARTIFACT / "meta.json").is_file():
        local = local / CHECKPOINT_ARTIFACT
    if not (local / "meta.json").is_file():
        raise CheckpointError(f"{ref!r} does not hold an hsakd-ray checkpoint (no meta.json)")
    return str(local)


def check_reference(ref: str, tracking_uri: str) -> None:
    """Refuse, in one line and without writing anything, a ``runs:/`` or ``models:/`` reference that does not exist
    in ``tracking_uri`` (asked before a job starts, so a typo leaves no store, no run and no output behind)."""
    if not is_mlflow_reference(ref):
        if not (Path(ref) / "meta.json").is_file():
            raise CheckpointError(f"checkpoint {ref!r} not found (expected a directory with meta.json, "
                                  "runs:/RUN_ID/checkpoint or models:/NAME/VERSION)")
        return
    if not store_exists(tracking_uri):
        raise CheckpointError(f"{ref!r} not found: the tracking store {tracking_uri} does not exist yet")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        if ref.startswith("models:/"):
            model_version_source(ref, tracking_uri)
            return
        run_id, _, path = ref[len("runs:/"):].partition("/")
        client = MlflowClient(tracking_uri)
        client.get_run(run_id)
        names = {Path(a.path).name for a in client.list_artifacts(run_id, path or None)}
    except MlflowException as exc:
        raise CheckpointError(f"{ref!r} not found in {tracking_uri}: {exc.message.splitlines()[0]}") from None
    if "meta.json" not in names and CHECKPOINT_ARTIFACT not in names:
        raise CheckpointError(f"{ref!r} does not hold an hsakd-ray checkpoint (no meta.json in run {run_id}'s "
                              f"artifact {path or '/'!r})")


def model_version_source(ref: str, tracking_uri: str) -> str:
    """The artifact URI behind ``models:/NAME/VERSION`` (or ``models:/NAME@ALIAS``, ``models:/NAME/latest``).

    Looked up in the registry of ``tracking_uri`` itself: ``download_artifacts("models:/...")`` would ask the
    process-wide default registry (``./mlflow.db``), not the store the job tracks to."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    body = ref[len("models:/"):]
    if "@" in body:
        name, alias = body.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    else:
        name, _, version = body.rpartition("/")
        if not name:
            raise CheckpointError(f"model reference {ref!r} must look like models:/NAME/VERSION or models:/NAME@ALIAS")
        if version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise CheckpointError(f"no versions of registered model {name!r} in {tracking_uri}")
            version = str(max(int(v.version) for v in versions))
    found = client.get_model_version(name, version)
    student = found.model_id or found.source.startswith("models:/") or found.source.rstrip("/").endswith(
        f"/{MODEL_ARTIFACT}")  # a LoggedModel (sqlite keeps only its models:/MODEL_ID source), or an older Model
    if found.run_id and student:
        # a registered student Model: its run's checkpoint is what hsakd-ray trains from
        return f"{client.get_run(found.run_id).info.artifact_uri}/{CHECKPOINT_ARTIFACT}"
    return client.get_model_version_download_uri(name, version)


def register_checkpoint(run_id: str, name: str, tracking_uri: str) -> str:
    """Register the run's LoggedModel (a distill job's student) or else its checkpoint (a teacher, which later
    configs reference as ``models:/NAME/VERSION``) as a new version of ``name``; returns ``models:/NAME/VERSION``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.create_registered_model(name)
    except Exception:  # already registered: add a version
        pass
    run = client.get_run(run_id)
    model_id = run_logged_model(client, run_id)
    if model_id:
        with tracking_to(tracking_uri):  # MLflow's registry looks models:/MODEL_ID up in the process's store
            version = client.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id)
        return f"models:/{name}/{version.version}"
    has_model = any(a.path == MODEL_ARTIFACT for a in client.list_artifacts(run_id))
    source = f"{run.info.artifact_uri}/{MODEL_ARTIFACT if has_model else CHECKPOINT_ARTIFACT}"
    version = client.create_model_version(name, source, run_id=run_id)
    return f"models:/{name}/{version.version}"
