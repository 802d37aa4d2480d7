"""Clusters: a local multi-node Ray cluster with an MLflow server, for tests and demos (``hsakd-ray cluster``)."""
