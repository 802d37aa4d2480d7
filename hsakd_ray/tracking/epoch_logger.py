"""A Ray Train callback that logs each reported epoch to the job's MLflow run, once per epoch.

It runs in the Train controller (one process), after the epoch's checkpoint is persisted, so a worker killed
mid-epoch leaves neither a metric nor a checkpoint for that epoch; epochs already logged (before a restart)
are skipped, so every metric has exactly one value per epoch.
"""
from __future__ import annotations

import time

from ray.train import UserCallback

from .runs import log_epoch, logged_epochs


class MLflowEpochLogger(UserCallback):
    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._client = None
        self._logged: set[int] | None = None

    def after_report(self, run_context, metrics, checkpoint) -> None:
        from mlflow.tracking import MlflowClient

        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
            self._logged = logged_epochs(self._client, self.run_id)
        main = metrics[0]
        epoch = int(main["epoch"])
        if epoch in self._logged:
            return
        log_epoch(self._client, self.run_id, epoch, main, int(time.time() * 1000))
        self._logged.add(epoch)
