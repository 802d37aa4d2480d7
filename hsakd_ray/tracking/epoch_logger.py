"""A Ray Train callback that logs each reported epoch to the job's MLflow run, exactly once per epoch.

It runs in the Train controller (one process, so one writer even on a sqlite store). An epoch is written only once
a checkpoint at or after it is persisted: epochs reported without a checkpoint (``checkpoint_every > 1``) wait in
memory until the next checkpoint, because a worker failure before then re-runs them from the last checkpoint.
Epochs already in MLflow (logged before a worker-group restart or before ``--resume``) are skipped. The metrics
logged are rank 0's (``metrics[0]``; Train lists workers by world rank): losses and accuracies are already reduced
over all workers, while ``epoch_time`` (the training loop), ``epoch_total_time`` (training, evaluation and the previous
report) and ``images_per_sec`` are rank 0's wall clock over the global image count.

Restarts are recorded on the run for the audit trail: tag ``hsakd.worker_failures`` counts worker-group failures
seen by this controller, ``hsakd.resumed_at_epochs`` lists the epochs training continued at after a restart or
``--resume``.

One gap remains when the driver dies: between Ray persisting a checkpoint and this callback logging its epochs.
So each checkpoint carries the metrics of every epoch its run has reported (``reported_epochs.json``), and
``--resume`` logs those of the latest checkpoint that MLflow lacks (``backfill_epochs``) before training continues
after it. Every epoch, not only those since the previous checkpoint: Ray keeps one checkpoint besides the best, so
when the driver misses two checkpoints' epochs the earlier checkpoint, and with it its epochs, is already gone.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ray.train import UserCallback

# .runs (MLflow) is imported where used: a Train worker imports this module for write_reported_epochs only

FAILURES_TAG, RESUMED_TAG = "hsakd.worker_failures", "hsakd.resumed_at_epochs"
BACKFILLED_TAG = "hsakd.backfilled_epochs"
REPORTED_EPOCHS_FILE = "reported_epochs.json"
# what the job's fast path resolved ``train.precision`` / ``train.compile`` to: reported key -> run tag
FAST_PATH_TAGS = {"precision": "hsakd.precision", "compile": "hsakd.compile"}


def fast_path_tags(metrics: dict) -> dict[str, str]:
    """The run tags saying which precision and compile mode the job ran with (from its reported metrics)."""
    return {tag: str(metrics[key]) for key, tag in FAST_PATH_TAGS.items() if key in metrics}


def write_reported_epochs(checkpoint_dir: str | Path, reported: list[dict]) -> None:
    """Store in a checkpoint the metrics of every epoch its run has reported (this one included)."""
    (Path(checkpoint_dir) / REPORTED_EPOCHS_FILE).write_text(json.dumps(reported))


def read_reported_epochs(checkpoint_dir: str | Path) -> list[dict]:
    """The epochs ``write_reported_epochs`` stored in a checkpoint (none in a checkpoint without the file)."""
    file = Path(checkpoint_dir) / REPORTED_EPOCHS_FILE
    return json.loads(file.read_text()) if file.is_file() else []


def backfill_epochs(client, run_id: str, ray_run_path: str) -> list[int]:
    """Log the epochs that the Ray run's latest checkpoint made durable but MLflow never received; their numbers."""
    from ray.train import Result

    from .runs import log_epoch, logged_epochs

    try:
        result = Result.from_path(ray_run_path)
    except RuntimeError:  # no checkpoint was ever persisted
        return []
    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as directory:
        reported = read_reported_epochs(directory)
    logged = logged_epochs(client, run_id)
    missing = [m for m in reported if int(m["epoch"]) not in logged]
    for metrics in missing:
        log_epoch(client, run_id, int(metrics["epoch"]), metrics, int(time.time() * 1000))
    epochs = [int(m["epoch"]) for m in missing]
    if epochs:
        client.set_tag(run_id, BACKFILLED_TAG, ",".join(map(str, epochs)))
    return epochs


class MLflowEpochLogger(UserCallback):
    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._client = None
        self._logged: set[int] = set()
        self._pending: dict[int, tuple[dict, int]] = {}  # epoch -> (metrics, report time in ms)
        self._failures = 0
        self._expect_restart = True  # the first report of this controller may continue an earlier attempt
        self._tags: dict[str, str] = {}

    def _connect(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            from .runs import logged_epochs

            self._client = MlflowClient(self.tracking_uri)
            self._logged = logged_epochs(self._client, self.run_id)
        return self._client

    def after_report(self, run_context, metrics, checkpoint) -> None:
        client = self._connect()
        main = metrics[0]
        epoch = int(main["epoch"])
        tags = fast_path_tags(main)
        if tags and tags != self._tags:
            for tag, value in tags.items():
                client.set_tag(self.run_id, tag, value)
            self._tags = tags
        if self._expect_restart:
            self._expect_restart = False
            if self._failures or self._logged:
                self._note_resume(client, epoch)
        # a re-run epoch replaces what an earlier attempt reported but never made durable
        self._pending = {e: v for e, v in self._pending.items() if e < epoch}
        self._pending[epoch] = (dict(main), int(time.time() * 1000))
        if checkpoint is None:
            return
        from .runs import log_epoch

        for e in sorted(self._pending):
            values, stamp = self._pending.pop(e)
            if e not in self._logged:
                log_epoch(client, self.run_id, e, values, stamp)
                self._logged.add(e)

    def after_exception(self, run_context, worker_exceptions) -> None:
        self._failures += 1
        self._expect_restart = True
        self._connect().set_tag(self.run_id, FAILURES_TAG, str(self._failures))

    def _note_resume(self, client, epoch: int) -> None:
        run = client.get_run(self.run_id)
        earlier = run.data.tags.get(RESUMED_TAG, "")
        client.set_tag(self.run_id, RESUMED_TAG, f"{earlier},{epoch}" if earlier else str(epoch))
