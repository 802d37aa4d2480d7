"""Where a person looks at a run: the experiment kind that makes the MLflow UI open on its runs view, and the
UI address of a run (or the ``mlflow ui`` command that serves it, for a store on this machine)."""
from __future__ import annotations

from urllib.parse import urlparse

KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
WORKFLOW = "workflowType=machine_learning"  # opens the runs view whatever the browser last chose
LOCAL_UI = "http://127.0.0.1:5000"          # where ``mlflow ui`` serves by default


def model_experiment(client, name: str) -> str:
    """The id of experiment ``name``, created or (when it lacks the tag) marked as model training: MLflow 3
    otherwise opens it on its GenAI overview."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags={KIND_TAG: KIND})
    if experiment.tags.get(KIND_TAG) != KIND:
        client.set_experiment_tag(experiment.experiment_id, KIND_TAG, KIND)
    return experiment.experiment_id


def ui_base(tracking_uri: str) -> str | None:
    """The UI root of a tracking server (http/https), None for a store read by ``mlflow ui``."""
    if urlparse(tracking_uri).scheme in ("http", "https"):
        return tracking_uri.rstrip("/")
    return None


def experiment_url(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs?{WORKFLOW}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW}"


def ui_lines(tracking_uri: str, experiment_id: str, run_id: str, what: str = "run") -> list[str]:
    """What to print at the end of a job or sweep: the run's page and its experiment's runs view; for a store on
    this machine, first the command that serves them."""
    base = ui_base(tracking_uri)
    lines = []
    if base is None:
        lines.append(f"MLflow UI:  mlflow ui --backend-store-uri {tracking_uri}   (then open the addresses below)")
        base = LOCAL_UI
    lines.append(f"{what + ':':<11} {run_url(base, experiment_id, run_id)}")
    lines.append(f"{'all runs:':<11} {experiment_url(base, experiment_id)}")
    return lines


def print_ui(client, run_id: str, what: str = "run") -> None:
    """Print ``ui_lines`` for a run of the store ``client`` writes to."""
    experiment_id = client.get_run(run_id).info.experiment_id
    print("\n".join(ui_lines(client.tracking_uri, experiment_id, run_id, what)), flush=True)
