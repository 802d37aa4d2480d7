"""Start or join Ray, and the up-front checks that a cluster's storage and tracking store are usable."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import ray

from ..config import ConfigError
from ..tracking.store import is_local_store


def is_remote_storage(path: str) -> bool:
    return urlparse(path).scheme not in ("", "file")


def resolve_storage_path(path: str) -> str:
    return path if is_remote_storage(path) else str(Path(path).expanduser().resolve())


def init_ray(address: str | None) -> bool:
    """``None`` starts a local Ray instance; ``auto`` or ``host:port`` joins a running cluster.

    Returns True when this call started (or joined) Ray, so the caller owns ``ray.shutdown``; False when Ray was
    already initialised by someone else."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(log_to_driver=True)
    return True


SHARED_MARKER = ".hsakd-shared"  # a file in a local storage_path declaring it shared by every node (NFS, one host)


def alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive")]


def alive_node_count() -> int:
    return len(alive_nodes())


def check_cluster_paths(storage_path: str, tracking_uri: str, address: str | None) -> None:
    """On a multi-node cluster, refuse a node-local storage_path (other nodes' trials could not checkpoint or resume)
    and a file-based tracking store (sqlite, file: a cluster's runs belong on a tracking server that every user
    reaches, and sqlite takes one writer at a time). A loopback server URI is accepted: only the driver writes to
    MLflow (Tune's trial logger runs in the driver; Train pins each run's controller, which logs its epochs, to the
    driver's node), so a server on the driver's node is enough.

    Decided from the nodes Ray reports, not from ``address``: ``ray.init()`` also joins a cluster through
    ``RAY_ADDRESS``."""
    nodes = alive_nodes()
    if len(nodes) <= 1:
        return
    if not is_remote_storage(storage_path) and not Path(storage_path).is_mount():
        marker = Path(storage_path) / SHARED_MARKER
        if not marker.exists():
            raise ConfigError(
                f"ray.storage_path {storage_path!r} is a local directory but the cluster has {len(nodes)} nodes, "
                f"which cannot all see it: use s3://, gs:// or a shared filesystem (create {marker} to declare "
                "a shared mount)"
            )
    if is_local_store(tracking_uri):
        raise ConfigError(
            f"tracking URI {tracking_uri!r} is a local store but the cluster has {len(nodes)} nodes: "
            "start an MLflow tracking server and pass --tracking-uri http://HOST:PORT"
        )
