"""The final stage of ``hsakd-ray tune`` (``tune.final``): after the sweep, the best config trained on the whole
training set from the final teacher (final.py), for ``tune.final.seeds`` seeds, and each baseline of
``tune.final.baselines`` (``ce``: the student alone; ``kd``: classic KD from the same teacher) on the base config
with the same student, epochs and seeds. Each run is an ordinary distill job (train/job.py) whose MLflow run is a
child of the sweep's parent, tagged ``hsakd.final`` with its method and seed; ``--resume`` skips the finished ones
(found by those tags) and continues an interrupted one from its checkpoint. The results table (report.py) goes to
the parent as ``results.md`` and as its description, and ends the console output."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from ..config import Config, config_from_dict
from ..distill.methods import method_spec
from ..tracking import runs as R
from ..train.job import run_ray_job
from ..train.job_checks import is_remote_storage, resolve_storage_path
from . import results as out
from .published import published_figure
from .report import (
    FINAL_METHOD_TAG,
    FINAL_SEED_TAG,
    FINAL_TAG,
    NOTE_TAG,
    finished_final_runs,
    method_results,
    results_markdown,
)
from .space import SearchSpace, final_config


@dataclass(frozen=True)
class FinalRun:
    method: str
    seed: int
    name: str


def planned_runs(space: SearchSpace) -> list[FinalRun]:
    """The tuned method's seeds first (its first seed's student is the one registered), then each baseline's."""
    tuned, final = space.base.distill.method, space.tune.final
    methods = [tuned] + [m for m in final.baselines if m != tuned]
    seeds = [space.base.train.seed + i for i in range(final.seeds)]
    return [FinalRun(m, s, f"{space.name}-final-{m}-seed{s}") for m in methods for s in seeds]


def final_run_tags(parent: str, run: FinalRun) -> dict[str, str]:
    """The tags of a final run's MLflow run: a child of the sweep's parent, marked final, with its method and seed."""
    return {R.PARENT_TAG: parent, FINAL_TAG: "true", FINAL_METHOD_TAG: run.method, FINAL_SEED_TAG: str(run.seed)}


def final_run_config(space: SearchSpace, best_params: dict, teacher_ref: str | None, run: FinalRun) -> Config:
    """``best_config.yaml`` for the tuned method; the base config with ``distill.method`` swapped for a baseline. The
    registry (``tracking.register_model``) gets the tuned method's first seed only: the test set never chooses."""
    tuned = space.base.distill.method
    raw = final_config(space, best_params if run.method == tuned else {}, teacher_ref)
    raw["distill"]["method"] = run.method
    raw["train"]["seed"] = run.seed
    raw["tracking"]["run_name"] = run.name
    first = planned_runs(space)[0]
    if run != first:
        raw["tracking"]["register_model"] = None
    return config_from_dict(raw)


def finished_run(client: MlflowClient, experiment_id: str, parent: str, name: str) -> str | None:
    found = client.search_runs([experiment_id], max_results=1, filter_string=(
        f"tags.`{R.NAME_TAG}` = '{name}' and tags.`{R.PARENT_TAG}` = '{parent}' and tags.`{FINAL_TAG}` = 'true' and "
        "attributes.status = 'FINISHED'"))
    return found[0].info.run_id if found else None


def started_before(client: MlflowClient, experiment_id: str, parent: str, name: str, storage: str) -> bool:
    """An earlier attempt of this final run left its run and its Train checkpoints: continue it."""
    found = client.search_runs([experiment_id], max_results=1, filter_string=(
        f"tags.`{R.NAME_TAG}` = '{name}' and tags.`{R.PARENT_TAG}` = '{parent}'"))
    return bool(found) and (is_remote_storage(storage) or (Path(storage) / name).exists())


def run_final_stage(space: SearchSpace, client: MlflowClient, parent: str, best_params: dict,
                    teacher_ref: str | None, exp_path: Path, results_dir: Path) -> str:
    """Run (or, on resume, finish) every planned final run; write and log the results; returns the markdown."""
    experiment_id = client.get_run(parent).info.experiment_id
    planned = planned_runs(space)
    print(f"\nfinal runs: {len(planned)} ({', '.join(dict.fromkeys(r.method for r in planned))} x "
          f"{space.tune.final.seeds} seed(s)) on the whole training set, scored on the test set", flush=True)
    for i, run in enumerate(planned, 1):
        done = finished_run(client, experiment_id, parent, run.name)
        if done:
            print(f"final run {i}/{len(planned)} {run.name}: finished before (run {done})", flush=True)
            continue
        cfg = final_run_config(space, best_params, teacher_ref if method_spec(run.method).needs_teacher else None,
                               run)
        storage = resolve_storage_path(cfg.ray.storage_path)
        resume = started_before(client, experiment_id, parent, run.name, storage)
        print(f"final run {i}/{len(planned)} {run.name}: {run.method}, seed {run.seed}"
              f"{' (continued)' if resume else ''}", flush=True)
        try:
            run_ray_job(cfg, "distill", config_path=str(space.path), tracking_uri=client.tracking_uri, resume=resume,
                        tags=final_run_tags(parent, run))
        except KeyboardInterrupt:
            print(f"final runs interrupted; continue with: hsakd-ray tune {space.path} --resume {exp_path}",
                  flush=True)
            raise
    return write_results(space, client, parent, results_dir)


def teacher_mode(space: SearchSpace) -> str | None:
    return space.teacher_config.teacher.mode if space.teacher_config is not None else None


def write_results(space: SearchSpace, client: MlflowClient, parent: str, results_dir: Path) -> str:
    """``results.md`` in the results folder and on the parent run, the same markdown as the parent's description."""
    order = list(dict.fromkeys(r.method for r in planned_runs(space)))
    results = method_results(finished_final_runs(client, parent), order)
    markdown = results_markdown(f"Final runs of {space.name}", results,
                                lambda method: published_figure(space.path.stem, method, teacher_mode(space)))
    path = out.write_atomic(results_dir / "results.md", markdown)
    client.log_artifact(parent, str(path))
    client.set_tag(parent, NOTE_TAG, markdown)
    return markdown
