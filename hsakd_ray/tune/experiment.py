"""``hsakd-ray tune SPACE.yaml``: validate, train the teacher once (or resolve it), run the sweep with one MLflow
parent run and one child run per trial, then write the results (table, CSV, best_config.yaml, plots)."""
from __future__ import annotations

import dataclasses
import os
import signal
import uuid
from pathlib import Path

from mlflow.tracking import MlflowClient
from ray import tune

from ..config import Config, ConfigError, config_from_dict, load_config
from ..distill.methods import method_spec
from ..engine import read_meta
from ..engine.checkpoint import CONFIG_FILE
from ..engine.selection import kept_metric
from ..errors import Terminated
from ..tracking import runs as R
from ..tracking.references import CHECKPOINT_ARTIFACT, resolve_checkpoint
from ..tracking.ui import print_ui
from ..train.job import run_ray_job
from ..train.job_checks import resolve_storage_path
from ..train.job_spec import read_checkpoint_files
from ..train.prefetch import prefetch_dataset
from ..train.ray_session import check_cluster_paths, check_cluster_resources, init_ray_beside
from ..verbosity import verbose
from . import results as out
from .final import FINAL_TEACHER_TAG, final_teacher_stages, prepare_final_teacher
from .final_runs import run_final_stage
from .mlflow_logger import MLflowTrialLogger, trial_outcomes
from .resources import trial_resources
from .searchers import build_search_alg, build_trial_scheduler, param_space
from .sharing import sharing_settings
from .space import SearchSpace, check_placement, distribution_values, final_config, space_snapshot
from .sweep_checks import TRIAL, Sweep, checked_sweep, record_space, trial_need
from .sweep_table import SweepTable
from .trial import default_concurrency, run_trial


def tuning_metric(space: SearchSpace) -> str:
    return space.tune.metric or kept_metric(space.base, "distill") or "val/top1"


def check_placements(space: SearchSpace, teacher_stages: list[int]) -> None:
    """Every searched student placement must pair with heads the (resolved) teacher checkpoint has."""
    spec = space.search.get("student.aux_stages")
    candidates = distribution_values(spec) if spec else [space.base.student.aux_stages]
    where = "search.student.aux_stages" if spec else "student.aux_stages"
    for stages in candidates:
        cfg = dataclasses.replace(space.base, student=dataclasses.replace(space.base.student, aux_stages=stages))
        check_placement(cfg, teacher_stages, where)


SAW_VALIDATION_TAG = "hsakd.teacher_saw_validation"  # "true": the ranking's validation split trained the teacher


def saw_validation(base: Config, local: str | Path) -> str | None:
    """Why a given tuning teacher may have trained on the sweep's validation split, or None when its checkpoint shows
    it trained on the same tuning split (same dataset, ``val_fraction`` and ``split_seed``): an imported released
    teacher trained on the whole training set, so trials that copy it score well on validation images it learned."""
    meta = read_meta(local)
    if meta.get("kind") == "import":
        return f"it is an imported released checkpoint ({Path(meta.get('source') or local).name})"
    try:
        trained = load_config(Path(local) / CONFIG_FILE).data
    except ConfigError as exc:
        return f"its {CONFIG_FILE} does not say which split it trained on ({exc})"
    ours = base.data
    if (trained.name, trained.val_fraction, trained.split_seed) != (ours.name, ours.val_fraction, ours.split_seed):
        return (f"it trained on {trained.name} with data.val_fraction {trained.val_fraction} and data.split_seed "
                f"{trained.split_seed}; this sweep validates on {ours.name} with {ours.val_fraction} and "
                f"{ours.split_seed}")
    return None


def tuning_teacher(space: SearchSpace, uri: str, client: MlflowClient, experiment_id: str, resume: bool,
                   exp_path: str | None = None) -> tuple[str | None, dict[str, bytes] | None, str | None]:
    """Train the teacher once (reused on --resume) or resolve the given reference; returns (ref, files, why it may
    have seen the validation split or None). An interrupted teacher is continued by ``--resume`` (the same MLflow
    run, from its Train checkpoint)."""
    if not method_spec(space.base.distill.method).needs_teacher:
        return None, None, None
    ref = space.teacher_ref
    if space.teacher_config is not None:
        name = f"{space.name}-teacher"
        done = client.search_runs([experiment_id], filter_string=f"tags.`{R.NAME_TAG}` = '{name}' and "
                                  "attributes.status = 'FINISHED'", max_results=1)
        if done:
            ref = f"runs:/{done[0].info.run_id}/{CHECKPOINT_ARTIFACT}"
            print(f"teacher: reusing {ref} (trained once for this experiment)", flush=True)
        else:
            cfg = space.teacher_config
            cfg.tracking.run_name, cfg.tracking.experiment = name, space.base.tracking.experiment
            print(f"teacher: training {cfg.teacher.arch} once, shared by every trial", flush=True)
            storage = resolve_storage_path(space.base.ray.storage_path)
            try:
                ran = run_ray_job(cfg, "teacher", config_path=str(space.path), tracking_uri=uri,
                                  resume=resume and (Path(storage) / name).exists())
            except KeyboardInterrupt:
                print(f"interrupted while training the sweep's teacher; continue with: hsakd-ray tune {space.path} "
                      f"--resume {exp_path or Path(storage) / space.name}", flush=True)
                raise
            ref = f"runs:/{ran['run_id']}/{CHECKPOINT_ARTIFACT}"
    local = resolve_checkpoint(ref, uri, Path(space.base.train.output_dir) / ".checkpoint-cache")
    meta = read_meta(local)
    if meta["arch"] != space.base.teacher.arch:
        raise ConfigError(f"teacher checkpoint {ref} holds {meta['arch']!r}, but teacher.arch is "
                          f"{space.base.teacher.arch!r}")
    check_placements(space, list(meta["aux_stages"]))
    seen = None if space.teacher_config is not None else saw_validation(space.base, local)
    if seen:
        print(f"warning: the tuning teacher {ref} may have seen the validation split the trials are ranked on: "
              f"{seen}. Rankings can favour students that copy it; train the teacher in the space "
              "(teacher: {config: ...}) for a clean search.", flush=True)
    return ref, read_checkpoint_files(local), seen


class SweepInterrupt:
    """Ctrl-C / SIGTERM during a sweep. The first Ctrl-C asks Tune to stop gracefully (Tune's SIGUSR1 handler: it
    saves the experiment state and stops the trials) and is remembered, because Tune's ``fit`` then returns normally;
    a second raises KeyboardInterrupt at once. Tune's own SIGINT handler is off: it would leave no trace of the
    interrupt.

    SIGTERM stops at once (``Terminated``): it is often sent to the whole process group (``timeout``, Slurm,
    Kubernetes), Ray's GCS and raylet included, and a graceful stop would wait on them until Ray's own timeout ends
    the driver with the runs left RUNNING. Tune's latest experiment snapshot and each trial's Train checkpoints are
    what ``--resume`` continues from, as after a killed driver."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __enter__(self) -> SweepInterrupt:
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self._previous = signal.signal(signal.SIGINT, self._handle)
        self._previous_term = signal.signal(signal.SIGTERM, self._terminate)
        return self

    def _terminate(self, signum, frame) -> None:
        self.signum = signum
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up (MLflow runs closed KILLED) is not cut short
        raise Terminated(f"signal {signum}")

    def _handle(self, signum, frame) -> None:
        tune_stops = callable(signal.getsignal(signal.SIGUSR1))  # installed by Tune while fit() runs
        if self.signum is not None or not tune_stops:
            raise KeyboardInterrupt
        self.signum = signum
        print("stopping the sweep (Ctrl-C again to stop at once)", flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)
        if signal.getsignal(signal.SIGTERM) != signal.SIG_IGN:  # after a SIGTERM, ignored until the command ends
            signal.signal(signal.SIGTERM, self._previous_term)
        if self._env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env


def run_experiment(space_path: str, overrides: list[str] = (), tracking_uri: str | None = None,
                   resume: str | None = None, address: str | None = None) -> dict:
    return run_sweep(checked_sweep(space_path, overrides, tracking_uri, resume, address))


def run_sweep(sweep: Sweep) -> dict:
    """A sweep that passed ``checked_sweep``: start or join Ray, train or resolve the teacher, tune, summarise; the
    experiment's lock is released however it ends."""
    try:
        return _run_sweep(sweep)
    finally:
        if sweep.lock is not None:
            sweep.lock.release()


def _run_sweep(sweep: Sweep) -> dict:
    space, space_path, uri, storage = sweep.space, sweep.space_path, sweep.uri, sweep.storage
    exp_path, resume, address = sweep.exp_path, sweep.resume, sweep.address
    started_with = space_snapshot(space)  # before tuning_teacher names the teacher's run in its config
    prefetch_dataset(space.base.data)  # a download's progress bar on this console, before any trial starts
    _, client = init_ray_beside(address, lambda: MlflowClient(uri))
    check_cluster_paths(storage, uri, address)
    per_worker, workers, driver_cpu = trial_need(space)
    check_cluster_resources(per_worker, workers, TRIAL, extra_cpu=driver_cpu)

    experiment_id = R.get_experiment_id(client, space.base.tracking.experiment)
    R.reconcile_orphans(client, [experiment_id])
    record_space(started_with, space.name, exp_path, bool(resume))  # before the teacher: --resume from there checks it
    teacher_ref, teacher_files, seen = tuning_teacher(space, uri, client, experiment_id, bool(resume), exp_path)
    restore = bool(resume) and tune.Tuner.can_restore(exp_path)  # else interrupted before the trials started
    metric, mode = tuning_metric(space), space.tune.mode
    tags = R.base_tags("tune", space.name)
    tags.update({"hsakd.space_file": str(Path(space_path).resolve()), "ray.experiment_path": exp_path,
                 "hsakd.teacher_source": teacher_ref or "none", "hsakd.metric": metric})
    if teacher_ref:
        tags[SAW_VALIDATION_TAG] = "true" if seen else "false"
    params = {f"search.{k}": v for k, v in space.search.items()} | {
        "tune.scheduler": space.tune.scheduler.type, "tune.search_alg": space.tune.search_alg,
        "tune.num_samples": space.tune.num_samples, "tune.metric": metric}
    with R.tracked_run(client, space.base.tracking.experiment, space.name, tags, params,
                       resume=bool(resume)) as parent:
        print(f"MLflow parent run {parent.run_id} (experiment {space.base.tracking.experiment!r}, {uri})",
              flush=True)
        train_storage = str(Path(storage) / f"{space.name}-trials")
        logger = MLflowTrialLogger(uri, experiment_id, parent.run_id, space, train_storage)
        tuner = build_tuner(space, exp_path, storage, teacher_files, train_storage, logger, metric, mode, restore)
        resume_hint = f"experiment interrupted; continue with: hsakd-ray tune {space_path} --resume {exp_path}"
        with SweepInterrupt() as interrupt:
            try:
                grid = tuner.fit()
            except BaseException as exc:
                if not isinstance(exc, KeyboardInterrupt) and interrupt.signum != signal.SIGTERM:
                    raise
                logger.close_unfinished()  # from MLflow and the Train checkpoints on disk: no call to Ray
                print(resume_hint, flush=True)
                if interrupt.signum == signal.SIGTERM:  # Ray failing under a SIGTERM to the group is the interrupt
                    raise Terminated() from None
                raise
        if interrupt.signum is not None:
            logger.close_unfinished()
            print(resume_hint, flush=True)
            raise KeyboardInterrupt
        return summarise(space, grid, client, parent.run_id, teacher_ref, Path(exp_path), metric, mode)


def build_tuner(space: SearchSpace, exp_path: str, storage: str, teacher_files: dict[str, bytes] | None,
                train_storage: str, logger: MLflowTrialLogger, metric: str, mode: str, resume: bool) -> tune.Tuner:
    """The Tuner for a new sweep, or the restored one; every trial gets the shared teacher outputs' settings."""
    teacher_store = sharing_settings(space, storage)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, space=space, teacher_files=teacher_files, train_storage=train_storage,
                             teacher_store=teacher_store, sweep_attempt=uuid.uuid4().hex),
        trial_resources(space))
    if resume:
        return tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                  param_space=param_space(space))
    run_config = tune.RunConfig(name=space.name, storage_path=storage,
                                callbacks=[logger, SweepTable(space, metric, mode, history=logger.history)],
                                verbose=None if verbose() else 0,  # our table (tune/sweep_table.py); -v: Tune's own
                                failure_config=tune.FailureConfig(max_failures=space.base.ray.max_failures))
    concurrency = space.tune.max_concurrent_trials or default_concurrency(space)
    return tune.Tuner(
        trainable, param_space=param_space(space), run_config=run_config,
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, num_samples=space.tune.num_samples,
            scheduler=build_trial_scheduler(space), search_alg=build_search_alg(space, concurrency),
            time_budget_s=space.tune.time_budget_s),
    )


def final_teacher_for(space: SearchSpace, client: MlflowClient, parent: str, tuning_ref: str | None,
                      best_params: dict, exp_path: Path) -> str | None:
    """Train (or reuse, or take from the space) the final run's teacher and tag it on the parent run; an interrupt
    or failure here closes the parent like one during the sweep (``--resume`` then continues it)."""
    try:
        ref = prepare_final_teacher(space, client.tracking_uri, client, client.get_run(parent).info.experiment_id,
                                    tuning_ref)
        if ref is not None:
            stages = final_teacher_stages(space, ref, client.tracking_uri)
            winner = config_from_dict(final_config(space, best_params, None))
            check_placements(dataclasses.replace(space, search={}, base=winner), stages)
    except (KeyboardInterrupt, SystemExit):  # the parent is closed KILLED by tracked_run
        print(f"interrupted while preparing the final teacher; continue with: hsakd-ray tune {space.path} "
              f"--resume {exp_path}", flush=True)
        raise
    client.set_tag(parent, FINAL_TEACHER_TAG, ref or "none")
    return ref


def summarise(space: SearchSpace, grid, client: MlflowClient, parent: str, teacher_ref: str | None, exp_path: Path,
              metric: str, mode: str) -> dict:
    """Rank the trials, write and log the results, tag the winner on the parent run, prepare the final run: all from
    every trial's true final state (``trial_outcomes``), so a resumed sweep reports what an uninterrupted one would."""
    outcomes = trial_outcomes(client, client.get_run(parent).info.experiment_id, parent, grid, metric)
    rows = out.trial_rows(outcomes, metric, mode)
    searched = list(space.search)
    if not rows or all(r[f"best_{metric}"] != r[f"best_{metric}"] for r in rows):
        raise RuntimeError(f"no trial reported {metric}; see {exp_path}")
    if not out.can_win(rows[0], metric):
        raise RuntimeError(f"every trial that reported {metric} failed; see {exp_path}")
    best = rows[0]
    best_params = next(o.params for o in outcomes if o.trial_id == best["trial_id"])
    results_dir = exp_path / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    files = [out.write_csv(rows, results_dir / "trials.csv"),
             out.plot_metric_vs_params(rows, metric, searched, results_dir / "metric_vs_params.png"),
             out.plot_metric_by_placement(rows, metric, results_dir / "metric_by_placement.png"),
             out.plot_trial_curves(outcomes, metric, results_dir / "learning_curves.png", space.base.train.epochs),
             out.plot_metric_vs_compute(rows, metric, mode, results_dir / "metric_vs_compute.png")]
    for path in files:
        client.log_artifact(parent, str(path))
    print(f"\nTop trials by {metric} ({mode}):\n" + out.format_table(rows, metric, searched, space.tune.top_k),
          flush=True)
    client.set_tag(parent, "best_trial_id", best["trial_id"])
    client.set_tag(parent, "best_mlflow_run_id", best.get("mlflow_run_id", ""))
    R.log_metric_once(client, parent, f"best_{metric}", best[f"best_{metric}"])  # once, even after --resume
    final_teacher = final_teacher_for(space, client, parent, teacher_ref, best_params, exp_path)
    best_yaml = out.write_atomic(results_dir / "best_config.yaml",
                                 "# The winning trial's values on the base config: the final run, on the whole\n"
                                 "# training set with a teacher trained on it too, scored on the test set.\n"
                                 f"# Run it with: hsakd-ray distill {results_dir / 'best_config.yaml'}\n"
                                 + out.dump_yaml(final_config(space, best_params, final_teacher)))
    client.log_artifact(parent, str(best_yaml))
    by_hand = "" if space.tune.final.run else f"\nfinal run:   hsakd-ray distill {best_yaml}"
    print(f"\nbest config: {best_yaml}{by_hand}", flush=True)
    table = (run_final_stage(space, client, parent, best_params, final_teacher, exp_path, results_dir)
             if space.tune.final.run else None)  # tune/final_runs.py
    print_ui(client, parent, what="sweep")
    if table:
        print("\n" + table, flush=True)  # the console ends with the result a user came for
    return {"parent_run_id": parent, "best": best, "best_config": str(best_yaml), "rows": rows, "final": table}
