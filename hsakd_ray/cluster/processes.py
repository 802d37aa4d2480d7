"""Find and stop exactly the processes one local cluster started, never anyone else's.

Every process ``cluster up`` starts carries ``HSAKD_CLUSTER_ID=<id>`` in its environment, and Ray and MLflow pass
their environment on to everything they spawn (GCS, raylets, agents, dashboard modules, workers, uvicorn), so the
mark finds exactly this cluster's processes. ``ray stop`` is never used: it stops every Ray process on the machine.
"""
from __future__ import annotations

from ..process_marks import alive, marked_processes, stop_processes

CLUSTER_MARK = "HSAKD_CLUSTER_ID"

__all__ = ["CLUSTER_MARK", "alive", "cluster_processes", "stop_cluster_processes"]


def cluster_processes(cluster_id: str) -> dict[int, str]:
    """Live processes of one cluster (pid -> command line), found by the mark in their environment."""
    return {pid: cmdline for pid, (_, cmdline) in marked_processes(CLUSTER_MARK, cluster_id).items()}


def stop_cluster_processes(cluster_id: str, grace_s: float = 3.0) -> dict[int, str]:
    """SIGTERM every process of the cluster, SIGKILL what is left after ``grace_s`` (Ray's GCS and raylets can
    take minutes to drain once their peers are gone). Returns what survived even SIGKILL (normally nothing)."""
    return stop_processes(lambda: cluster_processes(cluster_id), grace_s)
