"""The one error of the cluster commands, importable without Ray (the CLI catches it as a user error)."""
from ..errors import ClusterError

__all__ = ["ClusterError"]
