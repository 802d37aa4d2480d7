"""A checked job on Ray: start or join Ray, open the MLflow run (``tracked_run``), fit the Train job, log the
artifacts. The run ends FINISHED, FAILED with the error, or KILLED on Ctrl-C / SIGTERM at any stage, within seconds.
"""
from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from mlflow.tracking import MlflowClient

from ..config import Config, config_to_dict, dump_config, flatten
from ..data import eval_split
from ..engine.selection import describe_kept, kept_metric, top1_summary
from ..tracking import runs as R
from ..tracking.epoch_logger import MLflowEpochLogger, backfill_epochs
from ..tracking.plots import plot_learning_curves, run_histories
from ..tracking.references import CHECKPOINT_ARTIFACT, register_checkpoint
from ..tracking.ui import print_ui
from .failfast import fit_or_user_error
from .preflight import job_description, job_need
from .progress import JobProgress
from .ray_session import check_cluster_paths, check_cluster_resources, init_ray_beside, shutdown_within
from .student_model import log_student_model
from .trainer import build_trainer


def kept_checkpoint(result, metric: str | None) -> tuple[str | None, int | None]:
    """(path, epoch) of the checkpoint a job produces: the best by ``metric`` (a validation metric), else the latest
    (the last epoch)."""
    ranked = [(m.get(metric, float("-inf")), c, m) for c, m in (result.best_checkpoints or [])] if metric else []
    if ranked:
        _, checkpoint, metrics = max(ranked, key=lambda t: t[0])
        return checkpoint.path, metrics.get("epoch")
    if result.checkpoint is None:
        return None, None
    return result.checkpoint.path, (result.metrics or {}).get("epoch")


def log_top1_summary(client: MlflowClient, run_id: str, split: str) -> dict[str, float]:
    """Log ``{split}/top1_last``, ``{split}/top1_best_epoch`` (and its epoch) from the run's per-epoch history."""
    history = {m.step: m.value for m in client.get_metric_history(run_id, f"{split}/top1")}
    summary = top1_summary(history, split)
    for key, value in summary.items():
        R.log_metric_once(client, run_id, key, value)  # once, even when a resumed job ends again
    return summary


def log_job_artifacts(client: MlflowClient, run_id: str, cfg: Config, result,
                      kind: str) -> tuple[str | None, int | None]:
    """config.yaml, the learning curves and the kept checkpoint; returns the checkpoint's (path, epoch)."""
    split = eval_split(cfg.data)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(dump_config(cfg))
        client.log_artifact(run_id, str(Path(tmp) / "config.yaml"))
        keys = ["train/loss", f"{split}/top1"]
        png = plot_learning_curves({run_id: run_histories(client, run_id, keys)}, Path(tmp) / "learning_curves.png",
                                   keys=("train/loss", "top1"))
        client.log_artifact(run_id, str(png))
    kept, epoch = kept_checkpoint(result, kept_metric(cfg, kind))
    if kept:
        client.log_artifacts(run_id, kept, artifact_path=CHECKPOINT_ARTIFACT)
    return kept, epoch


def fit_in_thread(trainer) -> object:
    """``trainer.fit()`` in a helper thread while the main thread waits, so Ctrl-C and SIGTERM reach this driver
    at once. In the main thread, Ray Train's own SIGINT handler waits for the controller to abort, which does not
    happen while the controller waits for a worker group that cannot start."""
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = fit_or_user_error(trainer.fit)
        except BaseException as exc:  # re-raised in the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="hsakd-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def run_on_ray(cfg: Config, kind: str, name: str, storage: str, uri: str, teacher_files: dict[str, bytes] | None,
               config_path: str | None, resume: bool, address: str | None, source: str) -> dict:
    """Start or join Ray, check what needs the cluster, fit; a Ray started (or joined) here is left when done."""
    started, client = init_ray_beside(address, lambda: MlflowClient(uri))
    stop_ray = shutdown_within if started else (lambda: None)  # bounded: Ray may be going down with the driver
    try:
        check_cluster_resources(job_need(cfg), cfg.scaling.num_workers, job_description(cfg, kind))
        check_cluster_paths(storage, uri, address)
        return fit_tracked(cfg, kind, name, storage, uri, teacher_files, config_path, resume, stop_ray, source,
                           client)
    finally:
        stop_ray()


def fit_tracked(cfg: Config, kind: str, name: str, storage: str, uri: str, teacher_files: dict[str, bytes] | None,
                config_path: str | None, resume: bool, stop_ray, source: str, client: MlflowClient) -> dict:
    """Create (or on ``resume`` reopen) the job's MLflow run through ``client`` (open on ``uri``), fit the
    Train job, log artifacts; the status is set by ``tracked_run``."""
    tags = R.base_tags(kind, name)
    tags.update({"hsakd.teacher_source": source, "ray.run_name": name, "ray.storage_path": storage,
                 "hsakd.config_file": str(config_path or "")})
    # on an interrupt the controller and its workers stop (stop_ray) before the status is final: no epoch after it
    with R.tracked_run(client, cfg.tracking.experiment, name, tags, flatten(config_to_dict(cfg)), resume=resume,
                       on_interrupt=stop_ray) as run:
        try:
            if resume:
                backfill_epochs(client, run.run_id, f"{storage}/{name}")
            print(f"MLflow run {run.run_id} in experiment {cfg.tracking.experiment!r} at {uri}; "
                  f"Ray run {storage}/{name}", flush=True)
            progress = JobProgress(name, cfg.train.epochs)  # the console's line per epoch (train/progress.py)
            # the console's callback first: an epoch MLflow has is already queued for the console
            trainer = build_trainer(cfg, kind, name, storage, [progress.callback, MLflowEpochLogger(uri, run.run_id)],
                                    teacher_files)
            result = progress.run(lambda: fit_in_thread(trainer))
        except (KeyboardInterrupt, SystemExit):
            print(f"run {name} killed; checkpoints kept in {storage}/{name}; continue with --resume", flush=True)
            raise
        best, kept_epoch = log_job_artifacts(client, run.run_id, cfg, result, kind)
        if kind == "distill" and best:  # the student, deployable: an MLflow Model (train/student_model.py)
            print(f"student model: {log_student_model(client, run.run_id, best)}", flush=True)
        summary = log_top1_summary(client, run.run_id, eval_split(cfg.data))
        if cfg.tracking.register_model and best:
            model = register_checkpoint(run.run_id, cfg.tracking.register_model, uri)
            client.set_tag(run.run_id, "hsakd.registered_model", model)
            print(f"registered {model}", flush=True)
    metrics = result.metrics or {}
    split, kept_by = eval_split(cfg.data), kept_metric(cfg, kind)
    print(f"done: {kind} {name}: {split}/top1 {summary.get(f'{split}/top1_last', float('nan')):.2f} last epoch, "
          f"{summary.get(f'{split}/top1_best_epoch', float('nan')):.2f} best epoch; checkpoint "
          f"runs:/{run.run_id}/{CHECKPOINT_ARTIFACT} ({describe_kept(kept_by, kept_epoch)})", flush=True)
    print_ui(client, run.run_id)
    return {"run_id": run.run_id, "metrics": metrics, "best_checkpoint": best, "kept_epoch": kept_epoch,
            "summary": summary}
