"""Where runs are tracked: resolve the tracking URI and check it is usable before any training starts."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, unwritable path, wrong kind for a cluster)."""


def resolve_tracking_uri(cli_uri: str | None = None, config_uri: str | None = None) -> str:
    """``--tracking-uri``, then ``tracking.uri``, then ``MLFLOW_TRACKING_URI``, then MLflow's default
    (``sqlite:///mlflow.db``). A relative sqlite path is made absolute so Ray processes find the same file."""
    import mlflow

    uri = cli_uri or config_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def is_local_store(uri: str) -> bool:
    """True for stores that only this machine can write (sqlite file, local file store)."""
    return urlparse(uri).scheme in ("sqlite", "file", "")


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with one line, when the tracking store cannot be reached."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        import requests

        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        except requests.RequestException as exc:
            raise TrackingError(f"MLflow tracking server {uri} cannot be reached: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise TrackingError(f"MLflow tracking server {uri} answered /health with HTTP {response.status_code}")
    elif scheme == "sqlite":
        parent = Path(uri[len("sqlite:///"):]).parent
        if not parent.is_dir():
            raise TrackingError(f"tracking URI {uri}: directory {parent} does not exist")
