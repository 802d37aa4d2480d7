"""The driver of ``hsakd-ray teacher|distill|probe``: one TorchTrainer job = one MLflow run.

Order matters for trust: check the tracking store, resolve the teacher, create (or on ``--resume`` reuse) the
run, then fit; the final status is FINISHED, FAILED with the error, or KILLED on Ctrl-C / SIGTERM.
"""
from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient

from ..config import Config, ConfigError, config_to_dict, dump_config, flatten
from ..data import eval_split
from ..distill.methods import method_spec
from ..engine.selection import describe_kept, kept_metric, top1_summary
from ..tracking import runs as R
from ..tracking.epoch_logger import MLflowEpochLogger, backfill_epochs
from ..tracking.plots import plot_learning_curves, run_histories
from ..tracking.references import CHECKPOINT_ARTIFACT, register_checkpoint, resolve_checkpoint
from ..tracking.store import check_tracking_uri, resolve_tracking_uri
from .ray_session import check_cluster_paths, init_ray, is_remote_storage, resolve_storage_path
from .trainer import build_trainer, read_checkpoint_files


class Terminated(KeyboardInterrupt):
    """Raised in the driver by SIGTERM so the run is closed as KILLED.

    A KeyboardInterrupt on purpose: the blocking ``ray.get`` inside ``TorchTrainer.fit`` gives way only to
    KeyboardInterrupt or SystemExit raised by a signal handler; any other exception stays pending until the job has
    finished and then surfaces as a SystemError (Ray 2.60), so SIGTERM would neither stop training nor mark KILLED.
    """


def _raise_terminated(signum, frame):
    raise Terminated(f"signal {signum}")


# What stopping the driver raises out of ``fit``: our SIGTERM handler's Terminated, Ctrl-C's KeyboardInterrupt, or
# the SystemExit of Ray's own SIGINT handler, which aborts the Train controller and then calls sys.exit.
INTERRUPTS = (KeyboardInterrupt, SystemExit)


def default_run_name(cfg: Config, kind: str) -> str:
    arch = cfg.teacher.arch if kind == "teacher" else cfg.student.arch
    return cfg.tracking.run_name or f"{kind}-{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def teacher_source(cfg: Config, kind: str) -> str:
    if kind == "teacher":
        return cfg.teacher.pretrained or "scratch"
    if kind == "probe":
        return cfg.student.checkpoint or ""
    return cfg.teacher.checkpoint or ("" if method_spec(cfg.distill.method).needs_teacher else "none")


def prepare_teacher(cfg: Config, kind: str, tracking_uri: str) -> dict[str, bytes] | None:
    """Resolve ``teacher.checkpoint`` / ``student.checkpoint`` (path, runs:/, models:/) and read its files.

    The config keeps the reference as written (the run's params, tags and config.yaml name ``runs:/...``, not a
    download cache); workers get the files through the object store and load them from a local copy."""
    field = {"distill": "teacher", "probe": "student"}.get(kind)
    method = method_spec(cfg.distill.method)
    if field is None or (kind == "distill" and not method.needs_teacher):
        return None
    ref = getattr(cfg, field).checkpoint
    if not ref:
        return None
    cache = Path(cfg.train.output_dir) / ".checkpoint-cache"
    local = resolve_checkpoint(ref, tracking_uri, cache)
    from ..engine import load_network

    # validate on the driver so a mismatch is one line before any worker starts
    stages = cfg.student.aux_stages if (kind == "distill" and method.teacher_heads) else []
    load_network(local, getattr(cfg, field).arch, stages, role=field, student_arch=cfg.student.arch)
    return read_checkpoint_files(local)


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
        client.log_metric(run_id, key, value)
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


def run_ray_job(cfg: Config, kind: str, config_path: str | None = None, tracking_uri: str | None = None,
                resume: bool = False, address: str | None = None) -> dict:
    """Check the tracking store and the teacher, then run the job on Ray (started here, or the one already up)."""
    uri = resolve_tracking_uri(tracking_uri, cfg.tracking.uri)
    check_tracking_uri(uri)
    teacher_files = prepare_teacher(cfg, kind, uri)
    name = default_run_name(cfg, kind)
    storage = resolve_storage_path(cfg.ray.storage_path)
    run_dir_exists = not is_remote_storage(storage) and (Path(storage) / name).exists()
    if run_dir_exists and not resume:
        raise ConfigError(f"a run named {name!r} already exists in {storage}: pass --resume to continue it, "
                          "or set tracking.run_name to a new name")
    if resume and not is_remote_storage(storage) and not run_dir_exists:
        raise ConfigError(f"--resume: no run named {name!r} in {storage} (set tracking.run_name to its name)")
    address = address or cfg.ray.address
    # a job that started (or joined) Ray here disconnects when it ends: no local Ray process outlives the driver
    stop_ray = ray.shutdown if init_ray(address) else (lambda: None)
    try:
        check_cluster_paths(storage, uri, address)
        return fit_tracked(cfg, kind, name, storage, uri, teacher_files, config_path, resume, stop_ray)
    finally:
        stop_ray()


def fit_tracked(cfg: Config, kind: str, name: str, storage: str, uri: str, teacher_files: dict[str, bytes] | None,
                config_path: str | None, resume: bool, stop_ray) -> dict:
    """Create (or on ``resume`` reopen) the job's MLflow run, fit the TorchTrainer, log artifacts, set the status."""
    client = MlflowClient(uri)
    experiment_id = R.get_experiment_id(client, cfg.tracking.experiment)
    R.reconcile_orphans(client, [experiment_id])
    tags = R.base_tags(kind, name)
    tags.update({"hsakd.teacher_source": teacher_source(cfg, kind), "ray.run_name": name,
                 "ray.storage_path": storage, "hsakd.config_file": str(config_path or "")})
    run_id = R.start_run(client, experiment_id, name, tags, flatten(config_to_dict(cfg)), resume=resume)
    if resume:
        backfill_epochs(client, run_id, f"{storage}/{name}")
    print(f"MLflow run {run_id} in experiment {cfg.tracking.experiment!r} at {uri}; Ray run {storage}/{name}",
          flush=True)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        trainer = build_trainer(cfg, kind, name, storage, [MLflowEpochLogger(uri, run_id)], teacher_files)
        result = trainer.fit()
        best, kept_epoch = log_job_artifacts(client, run_id, cfg, result, kind)
        summary = log_top1_summary(client, run_id, eval_split(cfg.data))
        if cfg.tracking.register_model and best:
            model = register_checkpoint(run_id, cfg.tracking.register_model, uri)
            client.set_tag(run_id, "hsakd.registered_model", model)
            print(f"registered {model}", flush=True)
        R.finish_run(client, run_id, "FINISHED")
    except INTERRUPTS:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a repeated SIGTERM must not cut the cleanup short
        stop_ray()  # the controller and its workers stop before the status is final (no epoch logged after it)
        R.finish_run(client, run_id, "KILLED")
        print(f"run {name} killed; checkpoints kept in {storage}/{name}; continue with --resume", flush=True)
        raise KeyboardInterrupt from None
    except Exception as exc:
        R.finish_run(client, run_id, "FAILED", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        for sig, handler in previous.items():  # fit() leaves Ray's SIGINT handler, bound to a finished controller
            signal.signal(sig, handler)
    metrics = result.metrics or {}
    split, kept_by = eval_split(cfg.data), kept_metric(cfg, kind)
    print(f"done: {kind} {name}: {split}/top1 {summary.get(f'{split}/top1_last', float('nan')):.2f} last epoch, "
          f"{summary.get(f'{split}/top1_best_epoch', float('nan')):.2f} best epoch; checkpoint "
          f"runs:/{run_id}/{CHECKPOINT_ARTIFACT} ({describe_kept(kept_by, kept_epoch)})", flush=True)
    return {"run_id": run_id, "metrics": metrics, "best_checkpoint": best, "kept_epoch": kept_epoch, "summary": summary}
