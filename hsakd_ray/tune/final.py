"""The final run's teacher, as published: trained on the whole training set (``val_fraction`` 0).

The trials distill from a teacher trained on the tuning split (the training set minus the validation split), so the
validation split stays unseen by every network the search ranks. The final run (``best_config.yaml``) trains on the
whole training set, so its teacher must too: it is trained once, as its own MLflow run named
``<space>-final-teacher``, after the sweep (see ``prepare_final_teacher``), reused by ``--resume`` and later calls,
or given by the space as ``teacher.final_checkpoint``. A space whose teacher is a given reference uses it unchanged.
With no validation split left to choose on, the final teacher keeps its last epoch (engine/selection.py), also in
``frozen`` mode, where the tuning teacher keeps its best validation epoch.
"""
from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from ..config import Config, ConfigError, config_from_dict, config_to_dict
from ..distill.methods import method_spec
from ..engine import read_meta
from ..tracking import runs as R
from ..tracking.references import CHECKPOINT_ARTIFACT, resolve_checkpoint
from ..train.job import run_ray_job
from ..train.job_checks import is_remote_storage, resolve_storage_path
from .space import SearchSpace

FINAL_TEACHER_TAG = "hsakd.final_teacher"


def final_teacher_name(space: SearchSpace) -> str:
    return f"{space.name}-final-teacher"


def final_teacher_config(space: SearchSpace) -> Config:
    """The tuning teacher's config with ``data.val_fraction`` 0 (the whole training set) and its own run name."""
    raw = config_to_dict(space.teacher_config)
    raw["data"]["val_fraction"] = 0.0
    raw["tracking"].update(run_name=final_teacher_name(space), experiment=space.base.tracking.experiment)
    return config_from_dict(raw)


def finished_run(client: MlflowClient, experiment_id: str, name: str) -> str | None:
    done = client.search_runs([experiment_id], filter_string=f"tags.`{R.NAME_TAG}` = '{name}' and "
                              "attributes.status = 'FINISHED'", max_results=1)
    return done[0].info.run_id if done else None


def prepare_final_teacher(space: SearchSpace, uri: str, client: MlflowClient, experiment_id: str,
                          tuning_ref: str | None) -> str | None:
    """The reference the final run's config names as ``teacher.checkpoint``: the space's ``final_checkpoint``, the
    given tuning reference, the finished ``<space>-final-teacher`` run, or that run trained now (resumed when an
    interrupted attempt left its Ray run). None when the method needs no teacher.

    Trained after the sweep, not before or beside it: it needs nothing from the winner, but before the trials it would
    delay every result by a full teacher training, and beside them it would take the workers the trials run on; after
    the sweep it has the whole cluster, and an interrupted or failed sweep costs no final teacher."""
    if not method_spec(space.base.distill.method).needs_teacher:
        return None
    if space.final_teacher_ref:
        ref = space.final_teacher_ref
    elif space.teacher_config is None:
        return tuning_ref  # a given reference is the teacher of both the trials and the final run
    else:
        name = final_teacher_name(space)
        run_id = finished_run(client, experiment_id, name)
        if run_id:
            print(f"final teacher: reusing run {run_id} (trained once on the whole training set)", flush=True)
        else:
            cfg = final_teacher_config(space)
            storage = resolve_storage_path(cfg.ray.storage_path)
            earlier = (R.find_run(client, experiment_id, R.NAME_TAG, name) is not None if is_remote_storage(storage)
                       else (Path(storage) / name).exists())
            print(f"final teacher: training {cfg.teacher.arch} on the whole training set (val_fraction 0) for the "
                  "final run", flush=True)
            ran = run_ray_job(cfg, "teacher", config_path=str(space.path), tracking_uri=uri, resume=earlier)
            run_id = ran["run_id"]
        ref = f"runs:/{run_id}/{CHECKPOINT_ARTIFACT}"
    return ref


def final_teacher_stages(space: SearchSpace, ref: str, uri: str) -> list[int]:
    """The stages the final teacher has heads at, after checking that it holds ``teacher.arch``."""
    meta = read_meta(resolve_checkpoint(ref, uri, Path(space.base.train.output_dir) / ".checkpoint-cache"))
    if meta["arch"] != space.base.teacher.arch:
        raise ConfigError(f"final teacher {ref} holds {meta['arch']!r}, but teacher.arch is "
                          f"{space.base.teacher.arch!r}")
    return list(meta["aux_stages"])
