"""A checked job on Ray: start or join Ray, open the MLflow run (``tracked_run``), fit the Train job, log the
artifacts. The run ends FINISHED, FAILED with the error, or KILLED on Ctrl-C / SIGTERM at any stage, within seconds.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from ..config import config_to_dict, dump_config, flatten
from ..data import eval_split
from ..engine.selection import describe_kept, top1_summary
from ..tracking import runs as R
from ..tracking.epoch_logger import MLflowEpochLogger, backfill_epochs
from ..tracking.plots import plot_learning_curves, run_histories
from ..tracking.references import CHECKPOINT_ARTIFACT, register_checkpoint
from ..tracking.ui import print_ui
from .epoch_lines import JobProgress
from .job_checks import checkpoint_references, job_description, job_need
from .job_spec import Job
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


def log_job_artifacts(client: MlflowClient, run_id: str, job: Job, result) -> tuple[str | None, int | None]:
    """config.yaml, the learning curves and the kept checkpoint; returns the checkpoint's (path, epoch)."""
    cfg = job.cfg
    split = eval_split(cfg.data)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(dump_config(cfg))
        client.log_artifact(run_id, str(Path(tmp) / "config.yaml"))
        keys = ["train/loss", f"{split}/top1"]
        png = plot_learning_curves({run_id: run_histories(client, run_id, keys)}, Path(tmp) / "learning_curves.png",
                                   keys=("train/loss", "top1"))
        client.log_artifact(run_id, str(png))
    kept, epoch = kept_checkpoint(result, job.kept_metric)
    if kept:
        client.log_artifacts(run_id, kept, artifact_path=CHECKPOINT_ARTIFACT)
    return kept, epoch


def teacher_source(job: Job) -> str:
    """What the job's network starts from, for the run's tags: a teacher's ``teacher.pretrained`` (or scratch),
    else the checkpoint reference it was given (or none)."""
    if job.kind == "teacher":
        return job.cfg.teacher.pretrained or "scratch"
    return next(iter(checkpoint_references(job.cfg, job.kind).values()), "none")


def run_on_ray(job: Job, uri: str, address: str | None, resume: bool = False, config_path: str | None = None) -> dict:
    """Start or join Ray, check what needs the cluster, fit; a Ray started (or joined) here is left when done."""
    started, client = init_ray_beside(address, lambda: MlflowClient(uri))
    stop_ray = shutdown_within if started else (lambda: None)  # bounded: Ray may be going down with the driver
    try:
        check_cluster_resources(job_need(job.cfg), job.cfg.scaling.num_workers, job_description(job.cfg, job.kind))
        check_cluster_paths(job.storage, uri, address)
        return fit_tracked(job, client, resume, config_path, on_interrupt=stop_ray)
    finally:
        stop_ray()


def fit_tracked(job: Job, client: MlflowClient, resume: bool, config_path: str | None, on_interrupt) -> dict:
    """Create (or on ``resume`` reopen) the job's MLflow run through ``client``, fit the Train job, log artifacts;
    the status is set by ``tracked_run``. ``on_interrupt`` stops the job's Ray before the status is final."""
    cfg, kind, name, storage, uri = job.cfg, job.kind, job.name, job.storage, client.tracking_uri
    tags = R.base_tags(kind, name)
    tags.update({"hsakd.teacher_source": teacher_source(job), "ray.run_name": name, "ray.storage_path": storage,
                 "hsakd.config_file": str(config_path or "")})
    tags.update(job.run_tags or {})
    # on an interrupt the controller and its workers stop before the status is final: no epoch after it
    with R.tracked_run(client, cfg.tracking.experiment, name, tags, flatten(config_to_dict(cfg)), resume=resume,
                       on_interrupt=on_interrupt) as run:
        try:
            if resume:
                backfill_epochs(client, run.run_id, f"{storage}/{name}")
            print(f"MLflow run {run.run_id} in experiment {cfg.tracking.experiment!r} at {uri}; "
                  f"Ray run {storage}/{name}", flush=True)
            progress = JobProgress(name, cfg.train.epochs)  # the console's line per epoch (train/epoch_lines.py)
            # the console's callback first: an epoch MLflow has is already queued for the console
            trainer = build_trainer(job, [progress.callback, MLflowEpochLogger(uri, run.run_id)])
            result = progress.fit(trainer)
        except (KeyboardInterrupt, SystemExit):
            print(f"run {name} killed; checkpoints kept in {storage}/{name}; continue with --resume", flush=True)
            raise
        best, kept_epoch = log_job_artifacts(client, run.run_id, job, result)
        summary = log_top1_summary(client, run.run_id, eval_split(cfg.data))
        if kind == "distill" and best:  # the student, deployable: a LoggedModel linked to the summary above
            print(f"student model: {log_student_model(client, run.run_id, best)}", flush=True)
        if cfg.tracking.register_model and best:
            model = register_checkpoint(run.run_id, cfg.tracking.register_model, uri)
            client.set_tag(run.run_id, "hsakd.registered_model", model)
            print(f"registered {model}", flush=True)
    metrics = result.metrics or {}
    split, kept_by = eval_split(cfg.data), job.kept_metric
    print(f"done: {kind} {name}: {split}/top1 {summary.get(f'{split}/top1_last', float('nan')):.2f} last epoch, "
          f"{summary.get(f'{split}/top1_best_epoch', float('nan')):.2f} best epoch; checkpoint "
          f"runs:/{run.run_id}/{CHECKPOINT_ARTIFACT} ({describe_kept(kept_by, kept_epoch)})", flush=True)
    print_ui(client, run.run_id)
    return {"run_id": run.run_id, "metrics": metrics, "best_checkpoint": best, "kept_epoch": kept_epoch,
            "summary": summary}
