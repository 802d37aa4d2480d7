"""Where a Tune trial's start-up goes, from ``Tuner.fit()`` to its first training step, through the real code path.

A tiny resnet14 teacher checkpoint is trained (1 epoch, in this process) into a temporary directory; then ``--rounds``
real sweeps run one after another on one local Ray (``hsakd_ray.tune.experiment.run_experiment``, as
``hsakd-ray tune`` runs them): digits at 16 px, resnet8 students, 1 epoch, as many trials as run side by side by the
code's own default concurrency (all of a round's trials start at ``Tuner.fit()``, none waits for another to end).
The code stamps each phase (hsakd_ray/stamps.py, on with ``HSAKD_STARTUP_STAMPS``); per trial this prints the
seconds each phase took, in order:

    trial_process    Tuner.fit() -> the trial's process exists (Tune's trial scheduling, a Ray worker process)
    trial_fn         -> the trial function runs (its imports: Ray Train, torch, the package)
    trainer_fit      -> TorchTrainer.fit() is called (the trial's config)
    worker_process   -> the Train worker's process exists (Train's controller, placement group, worker actor)
    worker_fn        -> the train function runs in the worker (imports, torch process group)
    teacher_files    -> the teacher checkpoint shipped through the object store is on the worker's disk
    data             -> datasets built
    models           -> student and teacher built, teacher weights loaded
    setup            -> networks placed, fast-path choices made, optimizer built
    first_step       -> the training loop starts (batches, shared teacher outputs opened)

Its last line is ``startup_s: S``: the median over every trial of every round of seconds from ``Tuner.fit()`` to
the first training step. Run it under the project's Ray lock (another Ray on the machine breaks Ray Train):

    flock /work/notes/ray.lock timeout 900 python benchmarks/trial_startup.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PHASES = ("trial_process", "trial_fn", "trainer_fit", "worker_process", "worker_fn", "teacher_files", "data",
          "models", "setup", "first_step")


def make_teacher(folder: Path) -> str:
    """A resnet14 teacher with all heads, 1 epoch on digits, in this process: its checkpoint directory."""
    from hsakd_ray.config import config_from_dict
    from hsakd_ray.engine import Runtime, run_job
    from hsakd_ray.engine.reporting import LocalReporter

    cfg = config_from_dict({"data": {"name": "digits", "image_size": 16, "val_fraction": 0.1},
                            "teacher": {"arch": "resnet14", "aux_stages": "all"},
                            "train": {"epochs": 1, "batch_size": 64, "seed": 0}})
    reporter = LocalReporter(folder, 1, printer=lambda line: None)
    run_job(cfg, "teacher", Runtime(report=reporter))
    return str(reporter.kept)


def write_space(path: Path, name: str, teacher: str, trials: int) -> Path:
    space = {
        "base": {"data": {"name": "digits", "image_size": 16, "val_fraction": 0.1},
                 "teacher": {"arch": "resnet14"}, "student": {"arch": "resnet8"},
                 "distill": {"method": "hsakd"},
                 "optim": {"lr": 0.05, "schedule": "cosine", "milestones": [], "weight_decay": 5.0e-4},
                 "train": {"epochs": 1, "batch_size": 64, "seed": 0},
                 "tracking": {"experiment": "trial-startup"}},
        "teacher": {"checkpoint": teacher, "final_checkpoint": teacher},  # no final teacher to train afterwards
        "search": {"student.aux_stages": {"choice": [[1, 2, 3], [2, 3], [3], []]},
                   "distill.temperature": {"uniform": [1.0, 6.0]}},
        "tune": {"name": name, "num_samples": trials, "search_alg": "random",
                 "resources": {"num_workers": 1, "cpus_per_worker": 1}},
    }
    path.write_text(yaml.safe_dump(space))
    return path


def phase_table(stamps: list[dict], trials: list[str], fit_at: float) -> list[tuple[str, dict[str, float]]]:
    """Per trial: phase -> seconds since the previous phase reached (first one: since ``fit_at``)."""
    rows = []
    for trial in trials:
        seen = {s["phase"]: s["t"] for s in stamps if s["label"] == trial}  # a restart's later stamps win
        last, row = fit_at, {}
        for phase in PHASES:
            if phase in seen:
                row[phase] = seen[phase] - last
                last = seen[phase]
        row["total"] = seen["first_step"] - fit_at if "first_step" in seen else float("nan")
        rows.append((trial, row))
    return rows


def torch_import_seconds() -> float:
    """A fresh interpreter's ``import torch, ray.train.torch`` (what every Train worker imports), in seconds."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch, ray.train.torch"], check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="sweeps run one after another (default 3)")
    parser.add_argument("--trials", type=int, default=0, help="trials per sweep (default: as many as fit at once)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hsakd-startup-"))
    stamp_dir = work / "stamps"
    stamp_dir.mkdir()
    os.environ["HSAKD_STARTUP_STAMPS"] = str(stamp_dir)  # before Ray starts: its processes inherit it
    os.environ.setdefault("HSAKD_RAY_VERBOSE", "0")
    os.chdir(work)  # ray_results/ and mlflow.db land here

    from hsakd_ray import stamps
    from hsakd_ray.train.ray_session import init_ray
    from hsakd_ray.tune.experiment import run_experiment
    from hsakd_ray.tune.space import load_space
    from hsakd_ray.tune.trial import default_concurrency

    print(f"load average: {os.getloadavg()}; work dir {work}", flush=True)
    teacher = make_teacher(work / "teacher")
    import ray

    init_ray(None)
    try:
        results = []
        for i in range(args.rounds):
            path = write_space(work / f"space{i}.yaml", f"startup-{i}", teacher, 1)
            trials = args.trials or default_concurrency(load_space(path))
            write_space(path, f"startup-{i}", teacher, trials)
            done = run_experiment(str(path))
            results.append((f"startup-{i}", [row["trial_id"] for row in done["rows"]]))
    finally:
        ray.shutdown()

    found = stamps.read_stamps(stamp_dir)
    totals = []
    print(f"\nseconds per phase (each since the previous one); load average {os.getloadavg()}")
    print(f"{'round':<10}{'trial':<13}" + "".join(f"{p:>15}" for p in (*PHASES, "total")))
    for name, trials in results:
        fit_at = next(s["t"] for s in found if s["phase"] == "tuner_fit" and s["label"] == name)
        for trial, row in phase_table(found, trials, fit_at):
            print(f"{name:<10}{trial:<13}" + "".join(
                f"{row[p]:>15.2f}" if p in row else f"{'-':>15}" for p in (*PHASES, "total")))
            totals.append(row["total"])
    print(f"fresh `import torch, ray.train.torch`: {torch_import_seconds():.2f} s")
    print(f"startup_s: {statistics.median(totals):.2f}")


if __name__ == "__main__":
    sys.exit(main())
