"""What hsakd-ray needs from Ray that Ray's public API does not offer yet: each entry names the Ray version it was
written against and the Ray issue asking for a public way. ``tests/test_ray_compat.py`` fails when Ray changes what
an entry relies on, so a Ray upgrade cannot break hsakd-ray silently. Nothing else in the package may import a
private Ray or MLflow module (``tests/test_public_api.py`` enforces it)."""
from __future__ import annotations


def autoscaler_max_resources() -> dict[str, float] | None:
    """The most an autoscaler may grow the cluster to (``{"CPU": 64.0, "GPU": 8.0}``), or None when no autoscaler
    manages it (a local Ray, a fixed ``ray start`` cluster).

    Written against Ray 2.60: there is no public API for an autoscaling cluster's maximum (ray-project/ray#52033,
    "Access max_workers and autoscaling config at runtime"; #49501 asked for ``ray.max_cluster_resources()``, and
    the helper its fix added stays private). Used only to tell a shortfall an autoscaler can fill (a warning) from one
    it cannot (refused): without it every shortfall on a cluster is refused."""
    try:
        from ray._private.state import state

        found = state.get_max_resources_from_cluster_config()
    except (ImportError, AttributeError):  # Ray moved it: tests/test_ray_compat.py says so
        return None
    return {k: float(v) for k, v in found.items()} if found else None
