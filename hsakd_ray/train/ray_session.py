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


def alive_node_count() -> int:
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_cluster_paths(storage_path: str, tracking_uri: str, address: str | None) -> None:
    """On a multi-node cluster, refuse a node-local storage_path and a tracking store only this node can write."""
    if not address or alive_node_count() <= 1:
        return
    if not is_remote_storage(storage_path) and not Path(storage_path).is_mount():
        # a local path is only visible to workers on this node (a shared mount such as NFS is fine)
        marker = Path(storage_path) / ".hsakd-shared"
        if not marker.exists():
            raise ConfigError(
                f"ray.storage_path {storage_path!r} is a local directory but the cluster has "
                f"{alive_node_count()} nodes: use s3://, gs:// or a shared filesystem (create "
                f"{marker} to declare a shared mount)"
            )
    if is_local_store(tracking_uri):
        raise ConfigError(
            f"tracking URI {tracking_uri!r} is a local store but the cluster has {alive_node_count()} nodes: "
            "start an MLflow tracking server and pass --tracking-uri http://HOST:PORT"
        )
