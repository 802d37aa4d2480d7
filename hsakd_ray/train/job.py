"""The driver of ``hsakd-ray teacher|distill|probe``: one Ray Train job = one MLflow run.

A straight line: every check that can refuse the job runs first (job_checks.py), before Ray or MLflow are even
imported, so a refusal takes seconds and writes nothing; then the ``Job`` is resolved once (its name, storage and the
checkpoint it starts from), Ray starts (or is joined) and the run is tracked and fitted (fit.py → trainer.py →
worker.py → engine)."""
from __future__ import annotations

import tempfile

from ..config import Config, run_name
from ..distill.methods import method_spec
from ..tracking.references import resolve_checkpoint
from ..tracking.store import resolve_tracking_uri
from .job_checks import check_ray_job, checkpoint_references, resolve_storage_path
from .job_spec import Job, read_checkpoint_files
from .prefetch import prefetch_dataset


def read_start_checkpoint(cfg: Config, kind: str, tracking_uri: str) -> dict[str, bytes] | None:
    """Resolve ``teacher.checkpoint`` / ``student.checkpoint`` (path, runs:/, models:/) and read its files.

    The config keeps the reference as written (the run's params, tags and config.yaml name ``runs:/...``, not a
    download cache); workers get the files through the object store and load them from a local copy."""
    refs = checkpoint_references(cfg, kind)
    if not refs:
        return None
    key, ref = next(iter(refs.items()))
    field = key.split(".")[0]
    from ..engine import load_network

    with tempfile.TemporaryDirectory(prefix="hsakd-checkpoint-") as cache:  # the files travel as bytes anyway
        local = resolve_checkpoint(ref, tracking_uri, cache)
        # validate on the driver so a mismatch is one line before any worker starts
        stages = cfg.student.aux_stages if (kind == "distill" and method_spec(cfg.distill.method).teacher_heads) else []
        load_network(local, getattr(cfg, field).arch, stages, role=field, student_arch=cfg.student.arch)
        return read_checkpoint_files(local)


def run_ray_job(cfg: Config, kind: str, config_path: str | None = None, tracking_uri: str | None = None,
                resume: bool = False, address: str | None = None) -> dict:
    """Refuse what cannot run, then run the job on Ray (started here, or the one already up)."""
    name = run_name(cfg, kind)
    uri = resolve_tracking_uri(tracking_uri, cfg.tracking.uri)
    storage = resolve_storage_path(cfg.ray.storage_path)
    address = address or cfg.ray.address
    check_ray_job(cfg, kind, name, uri, storage, resume, address)
    job = Job(cfg, kind, name, storage, teacher_files=read_start_checkpoint(cfg, kind, uri))
    prefetch_dataset(cfg.data)  # a download's progress bar on this console, before workers start
    from .fit import run_on_ray  # Ray and MLflow load only once the job is known to be runnable

    return run_on_ray(job, uri, address, resume=resume, config_path=config_path)
