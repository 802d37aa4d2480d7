"""Where runs are tracked: resolve the tracking URI and check it is usable before any training starts."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from ..errors import TrackingError
from ..writable import unwritable_reason

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's own default; named here so resolving needs no mlflow import


def resolve_tracking_uri(cli_uri: str | None = None, config_uri: str | None = None) -> str:
    """``--tracking-uri``, then ``tracking.uri``, then ``MLFLOW_TRACKING_URI``, then MLflow's default
    (``sqlite:///mlflow.db``). A relative sqlite path is made absolute so Ray processes find the same file."""
    uri = cli_uri or config_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def is_local_store(uri: str) -> bool:
    """True for stores that only this machine can write (sqlite file, local file store)."""
    return urlparse(uri).scheme in ("sqlite", "file", "")


# Schemes MLflow's own tracking stores take (a database URI may name its driver: postgresql+psycopg2://)
KNOWN_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks", "databricks-uc")


def _plugin_schemes() -> set[str]:
    """Schemes registered by installed MLflow tracking-store plugins (entry points ``mlflow.tracking_store``)."""
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group="mlflow.tracking_store")}


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with one line, when the tracking store cannot be used: an unknown scheme, an unreachable
    server, a sqlite file whose directory is missing or not writable. Writes nothing."""
    scheme = urlparse(uri).scheme
    if scheme and len(scheme) > 1 and scheme.split("+")[0] not in KNOWN_SCHEMES and scheme not in _plugin_schemes():
        raise TrackingError(f"tracking URI {uri!r}: unknown scheme {scheme!r}; use http(s)://HOST:PORT (an MLflow "
                            "server), sqlite:///PATH.db, file:PATH or a database URI (postgresql://, mysql://)")
    if scheme in ("http", "https"):
        import requests

        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        except requests.RequestException as exc:
            raise TrackingError(f"MLflow tracking server {uri} cannot be reached: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise TrackingError(f"MLflow tracking server {uri} answered /health with HTTP {response.status_code}")
    elif scheme == "sqlite":
        db = Path(sqlite_path(uri))
        if not db.parent.is_dir():
            raise TrackingError(f"tracking URI {uri}: directory {db.parent} does not exist")
        if db.exists() and not os.access(db, os.W_OK):
            raise TrackingError(f"tracking URI {uri}: {db} is not writable")
        reason = None if db.exists() else unwritable_reason(db.parent)
        if reason:
            raise TrackingError(f"tracking URI {uri}: cannot create {db.name}: {reason}")
    elif scheme in ("file", "") and uri:
        reason = unwritable_reason(urlparse(uri).path if scheme else uri)
        if reason:
            raise TrackingError(f"tracking URI {uri}: {reason}")


def sqlite_path(uri: str) -> str:
    """The database file of a ``sqlite:///PATH`` URI (absolute with four slashes, relative with three)."""
    return uri[len("sqlite:///"):]


def store_exists(uri: str) -> bool:
    """False when the store is a sqlite file not created yet (it then holds no run and no model)."""
    return urlparse(uri).scheme != "sqlite" or Path(sqlite_path(uri)).is_file()
