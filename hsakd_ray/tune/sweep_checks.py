"""Everything about a sweep that can be refused before Ray or MLflow are imported (seconds of imports a bad space
file, override or tracking URI should not wait for): the space, the tracking URI, the storage and experiment paths,
the resources a trial and the teacher job need on this machine, the data."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

from ..config import ConfigError
from ..data.checks import check_data
from ..tracking.references import check_reference
from ..tracking.store import check_tracking_uri, resolve_tracking_uri
from ..train.job_checks import (
    check_local_resources,
    check_storage_path,
    job_description,
    job_need,
    resolve_storage_path,
    worker_group_need,
)
from .lock import ExperimentLock, hold_experiment
from .resources import trial_resources
from .space import SearchSpace, changed_keys, load_space, space_snapshot

TRIAL = "tune.resources: a trial"
SNAPSHOT = "hsakd_space.yaml"  # in the experiment directory: the resolved space it started with


@dataclass
class Sweep:
    """A space that passed every check that needs no cluster, with where its sweep runs and is tracked."""

    space: SearchSpace
    space_path: str
    uri: str
    storage: str
    exp_path: str
    resume: str | None
    address: str | None
    lock: ExperimentLock | None = None  # held from the checks to the sweep's end: one sweep per experiment


def trial_need(space: SearchSpace) -> tuple[dict[str, float], int, float]:
    """(per worker, workers, the trial driver's own CPU) of one trial."""
    r = space.tune.resources
    return worker_group_need(r.num_workers, r.cpus_per_worker, r.gpus_per_worker), r.num_workers, \
        trial_resources(space)["cpu"]


def experiment_path(space: SearchSpace, storage: str, resume: str | None) -> str:
    """Where the Tune experiment lives: ``--resume PATH`` (relative paths are taken from the current directory),
    else ``storage_path/NAME``."""
    if not resume:
        return str(Path(storage) / space.name)
    if urlparse(resume).scheme not in ("", "file"):
        return resume
    return str(Path(urlparse(resume).path if resume.startswith("file:") else resume).expanduser().resolve())


def tuning_teacher_run(space: SearchSpace, storage: str) -> Path | None:
    """The Ray run directory of the teacher a sweep trains for its trials, if one exists (the sweep got that far)."""
    if space.teacher_config is None or urlparse(storage).scheme not in ("", "file"):
        return None
    run = Path(storage) / f"{space.name}-teacher"
    return run if run.exists() else None


def check_experiment(space: SearchSpace, uri: str, storage: str, exp_path: str, resume: str | None,
                     address: str | None) -> None:
    """Everything about a sweep that can be refused before Ray starts or any run is created."""
    check_tracking_uri(uri)
    teacher_run = tuning_teacher_run(space, storage)
    if resume:
        from ray import tune  # only a resume asks Tune whether the experiment is there

        before_trials = Path(exp_path) == Path(storage) / space.name and (
            teacher_run is not None or (Path(exp_path) / SNAPSHOT).is_file())  # interrupted before Tune started
        if not tune.Tuner.can_restore(exp_path) and not before_trials:
            raise ConfigError(f"--resume {resume}: no Tune experiment to restore at {exp_path}")
        check_space_unchanged(space, exp_path, resume)
    if not resume and teacher_run is not None and not tune_started(exp_path):
        raise ConfigError(f"experiment {space.name!r} was interrupted while its teacher trained ({teacher_run}): "
                          f"continue it with --resume {exp_path}, or set tune.name")
    if not resume and tune_started(exp_path):
        raise ConfigError(f"experiment {space.name!r} already exists at {exp_path}: pass --resume {exp_path} "
                          "or set tune.name")
    check_storage_path(storage)
    per_worker, workers, driver_cpu = trial_need(space)
    check_local_resources(per_worker, workers, TRIAL, address, extra_cpu=driver_cpu)
    teacher = space.teacher_config
    if teacher is not None:
        check_local_resources(job_need(teacher), teacher.scaling.num_workers, job_description(teacher, "teacher"),
                              address)
        check_data(teacher.data, teacher.train.batch_size)
    if space.teacher_ref:
        check_reference(space.teacher_ref, uri)
    check_data(space.base.data, space.base.train.batch_size)


def _snapshot_file(exp_path: str) -> Path | None:
    return None if urlparse(exp_path).scheme not in ("", "file") else Path(exp_path) / SNAPSHOT


def tune_started(exp_path: str) -> bool:
    """Whether the experiment directory exists with more than the space snapshot a sweep writes before its teacher."""
    path = Path(exp_path)
    return path.is_dir() and [p.name for p in path.iterdir()] != [SNAPSHOT]


def record_space(snapshot: dict, name: str, exp_path: str, resume: bool) -> None:
    """Keep the resolved space (``space_snapshot``, taken before the sweep's steps fill in the teacher's run name)
    in the experiment directory, atomically, for ``--resume`` to compare against: a new sweep writes it, a resumed
    one keeps the one its experiment started with."""
    path = _snapshot_file(exp_path)
    if path is None or (resume and path.exists()):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(f"# the resolved space of experiment {name!r}: --resume refuses another\n")
        yaml.safe_dump(snapshot, f, sort_keys=False)
    os.replace(tmp, path)


def check_space_unchanged(space: SearchSpace, exp_path: str, resume: str) -> None:
    """Tune restores an experiment with the search space, sample count and scheduler it started with, while the
    trials would read the new base config: a resumed sweep with another space would be neither. Refuse it."""
    path = _snapshot_file(exp_path)
    if path is None or not path.is_file():
        return  # started before snapshots were kept, or on remote storage: nothing to compare
    stored = yaml.safe_load(path.read_text()) or {}
    changed = changed_keys(stored, yaml.safe_load(yaml.safe_dump(space_snapshot(space))))
    if changed:
        shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        raise ConfigError(f"--resume {resume}: the space differs from the one this experiment started with "
                          f"({shown}; kept in {path}): resume with that space, or start a new experiment "
                          "(another tune.name)")


def checked_sweep(space_path: str, overrides: list[str] = (), tracking_uri: str | None = None,
                  resume: str | None = None, address: str | None = None) -> Sweep:
    """Load the space and run ``check_experiment``: a refusal here has imported neither Ray nor MLflow (except for
    an MLflow reference to check, or a --resume to find)."""
    space = load_space(space_path, overrides)
    uri = resolve_tracking_uri(tracking_uri, space.base.tracking.uri)
    storage = resolve_storage_path(space.base.ray.storage_path)
    exp_path = experiment_path(space, storage, resume)
    address = address or space.base.ray.address
    lock = hold_experiment(exp_path, space.name)  # before the tracking store is opened: a second sweep stops here
    try:
        check_experiment(space, uri, storage, exp_path, resume, address)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Sweep(space, space_path, uri, storage, exp_path, resume, address, lock)
