"""Issue: should a one-worker trial train inside its Tune trial instead of launching a one-worker TorchTrainer?

The quickstart's sweep (search_spaces/quickstart.yaml: 6 trials, ASHA, 1 worker each, two at a time on 2 CPUs) is
run two ways, alternating, ``--rounds`` times each, on one local Ray, after its teacher is trained once:

- ``torchtrainer``: hsakd-ray's own trial (``hsakd_ray.tune.trial.run_trial``): the trial process builds a one-worker
  ``TorchTrainer`` (three processes per trial: the trial, Train's controller, the worker);
- ``in-trial``: a function trainable that runs the same job (``hsakd_ray.engine.run_job``, same config, teacher,
  shared teacher outputs and seeds) in the trial's own process, with ``tune.with_resources`` reserving the worker's
  CPUs and ``tune.report`` per epoch (one process per trial). Checkpoints, MLflow runs and the other behaviour a
  real trial has are left out: this side is the floor such a design could reach.

Per sweep it prints the wall time of ``Tuner.fit()`` and the best trial's val/top1; last line ``ratio: R`` = median
in-trial / median torchtrainer. Nothing else should run meanwhile. About 2 to 4 minutes per round on 2 cores.

    python benchmarks/trial_in_process.py --rounds 2
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def in_trial(config: dict, space, teacher_files: dict[str, bytes], teacher_store: dict | None) -> None:
    import torch
    from ray import tune

    from hsakd_ray.config import config_from_dict, config_to_dict
    from hsakd_ray.engine import Runtime, run_job
    from hsakd_ray.train.worker import materialise_teacher, worker_threads
    from hsakd_ray.tune.space import trial_config

    cfg = config_from_dict(config_to_dict(trial_config(space, config["params"], cross_checked=False)))
    torch.set_num_threads(worker_threads(cfg.scaling.cpus_per_worker))
    with tempfile.TemporaryDirectory() as scratch:
        cfg.teacher.checkpoint = materialise_teacher(teacher_files, scratch)
        run_job(cfg, "distill", Runtime(report=lambda epoch, metrics, save: tune.report(metrics),
                                        log=lambda line: None, teacher_store=teacher_store))


def sweep(kind: str, space, teacher_files, storage: Path, store_root: Path) -> tuple[float, float]:
    from ray import tune

    from hsakd_ray.engine.teacher_cache import StoreSettings
    from hsakd_ray.tune.searchers import build_search_alg, build_trial_scheduler, param_space
    from hsakd_ray.tune.trial import run_trial

    t = space.tune
    store = vars(StoreSettings(root=str(store_root), budget_bytes=int(t.teacher_store_gb * 2**30),
                               dtype=t.teacher_store_dtype))
    workers = t.resources.num_workers * t.resources.cpus_per_worker
    if kind == "torchtrainer":
        trainable = tune.with_resources(tune.with_parameters(
            run_trial, space=space, teacher_files=teacher_files, train_storage=str(storage / "train"),
            teacher_store=store), {"cpu": 0.05})
    else:
        trainable = tune.with_resources(tune.with_parameters(
            in_trial, space=space, teacher_files=teacher_files, teacher_store=store), {"cpu": workers + 0.05})
    tuner = tune.Tuner(trainable, param_space=param_space(space),
                       run_config=tune.RunConfig(name=kind, storage_path=str(storage), verbose=0),
                       tune_config=tune.TuneConfig(metric="val/top1", mode="max", num_samples=t.num_samples,
                                                   scheduler=build_trial_scheduler(space),
                                                   search_alg=build_search_alg(space, 2), max_concurrent_trials=2))
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    best = grid.get_best_result("val/top1", "max", scope="all")
    return wall, max(best.metrics_dataframe["val/top1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import os

    import ray

    from hsakd_ray.config import config_from_dict, config_to_dict
    from hsakd_ray.train.job import run_ray_job
    from hsakd_ray.train.job_spec import read_checkpoint_files
    from hsakd_ray.tune.space import load_space

    work = Path(tempfile.mkdtemp(prefix="trial-in-process-"))
    os.chdir(work)
    space = load_space(ROOT / "search_spaces" / "quickstart.yaml", [f"ray.storage_path={work / 'ray'}"])
    ray.init(num_cpus=2, log_to_driver=False)
    teacher = config_from_dict(config_to_dict(space.teacher_config))
    teacher.tracking.run_name = "teacher"
    ran = run_ray_job(teacher, "teacher", tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    files = read_checkpoint_files(ran["best_checkpoint"])
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    walls: dict[str, list[float]] = {"torchtrainer": [], "in-trial": []}
    for r in range(args.rounds):
        for kind in walls:
            wall, best = sweep(kind, space, files, work / f"{kind}-{r}", work / f"store-{kind}-{r}")
            walls[kind].append(wall)
            print(f"round {r + 1} {kind:<12} Tuner.fit {wall:7.2f} s  best val/top1 {best:.2f}", flush=True)
    ray.shutdown()
    base, alt = statistics.median(walls["torchtrainer"]), statistics.median(walls["in-trial"])
    print(f"median: torchtrainer {base:.2f} s, in-trial {alt:.2f} s; saves {100 * (1 - alt / base):.1f} %")
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"ratio: {alt / base:.3f}")


if __name__ == "__main__":
    main()
