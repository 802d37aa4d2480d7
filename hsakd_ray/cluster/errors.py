"""The one error of the cluster commands, importable without Ray (the CLI catches it)."""


class ClusterError(RuntimeError):
    """The local cluster cannot be started, found or stopped; the message says what to do."""
