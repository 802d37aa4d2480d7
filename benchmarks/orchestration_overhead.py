"""What Ray costs: one distillation job in-process vs under Ray Train (1 worker), and a Tune trial's start-up.

1. The same job (config, data, teacher, threads) runs in-process (``run_job`` with a local ``Runtime``) and as a
   1-worker ``TorchTrainer`` from ``hsakd_ray.train.trainer.build_trainer``, alternating, ``--rounds`` times each.
   Compared: the steady-state epoch time, the worker's own ``epoch_total_time`` (training, evaluation, and the
   previous epoch's report and checkpoint all count: in-process ``LocalReporter``, what ``--local`` runs, saving
   ``latest``/``best``; under Ray Train ``ray.train.report`` with the checkpoint persisted to storage), median after
   the first epoch; the training loop's own ``epoch_time`` alone; and the wall time of the whole run (Ray:
   ``fit()``, with Ray itself already started). Times taken in the Train controller would be no good here: it
   collects reports when it polls the workers, every ~2 s.
2. A minimal ``tune.Tuner`` whose trial function builds and fits a 1-epoch TorchTrainer: the time from
   ``Tuner.fit()`` to the trial's first report, against the in-process time from ``run_job`` to its first report.

    python benchmarks/orchestration_overhead.py              # ~ several minutes on a quiet 2-core machine
    python benchmarks/orchestration_overhead.py --quick      # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from ray.train import UserCallback

from hsakd_ray.config import Config, apply_overrides, config_from_dict, dump_config
from hsakd_ray.engine import Runtime, run_job, write_checkpoint
from hsakd_ray.engine.reporting import LocalReporter
from hsakd_ray.models import build_model


def job_config(args: argparse.Namespace, teacher_dir: Path, output: Path) -> Config:
    threads = args.threads or len(os.sched_getaffinity(0))
    raw = {
        "data": {"name": "synthetic", "image_size": 32, "synthetic_train_size": args.train_size,
                 "synthetic_test_size": 64, "synthetic_classes": 10},
        "teacher": {"arch": args.teacher, "checkpoint": str(teacher_dir)},
        "student": {"arch": args.student},
        "optim": {"schedule": "constant", "milestones": []},
        "train": {"epochs": args.epochs, "batch_size": args.batch, "device": "cpu", "threads": threads,
                  "output_dir": str(output)},
        "scaling": {"num_workers": 1, "cpus_per_worker": float(threads)},
        "ray": {"storage_path": str(output / "ray"), "max_failures": 0},
    }
    return config_from_dict(apply_overrides(raw, []))


def make_teacher(args: argparse.Namespace, path: Path) -> Path:
    """A randomly initialised teacher with heads on every stage, saved as a checkpoint directory."""
    torch.manual_seed(0)
    net = build_model(args.teacher, 10, "all")
    meta = {"kind": "teacher", "arch": net.arch, "num_classes": 10, "aux_stages": list(net.aux_stages),
            "epoch": 0, "metrics": {}, "dataset": "synthetic"}
    return write_checkpoint(path, model_state=net.state_dict(), meta=meta, config_yaml=dump_config(Config()))


def run_in_process(cfg: Config, run_dir: Path) -> dict:
    """All-in epoch times, loop epoch times, wall time and time to the first report of ``run_job`` in this process,
    reporting through ``LocalReporter`` as ``hsakd-ray distill --local`` does."""
    reporter = LocalReporter(run_dir, cfg.train.epochs, cfg.train.checkpoint_every, printer=lambda line: None)
    times: list[float] = []
    totals: list[float] = []
    stamps: list[float] = []
    start = time.perf_counter()

    def report(epoch: int, metrics: dict, save) -> None:
        reporter(epoch, metrics, save)
        stamps.append(time.perf_counter())
        times.append(metrics["epoch_time"])
        totals.append(metrics["epoch_total_time"])

    threads = torch.get_num_threads()
    run_job(cfg, "distill", Runtime(report=report))
    torch.set_num_threads(threads)
    return {"totals": totals, "epoch_times": times, "wall": time.perf_counter() - start,
            "first_report": stamps[0] - start}


class ReportLog(UserCallback):
    """Appends (wall-clock time, rank 0's metrics) of every Train report to a JSON-lines file. The Train
    controller runs in another process on this machine, so a file is the simplest way back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def after_report(self, run_context, metrics, checkpoint) -> None:
        numbers = {k: v for k, v in metrics[0].items() if isinstance(v, (int, float))}
        with open(self.path, "a") as f:
            f.write(json.dumps({"time": time.time(), "metrics": numbers}) + "\n")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


ROLES = [("RayTrainWorker", "train worker"), ("TrainController", "train controller"), ("raylet", "raylet"),
         ("gcs_server", "gcs"), ("agent", "agents"), ("monitor", "monitors"), ("default_worker", "idle workers")]


def _processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command line, user + system CPU seconds), read from Linux's /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ..., utime, stime
        out[int(entry.name)] = (int(fields[1]), cmdline, (int(fields[11]) + int(fields[12])) / tick)
    return out


def ray_cpu_seconds() -> Counter:
    """CPU seconds so far of the processes this driver's Ray started (all its descendants), by role."""
    procs = _processes()
    family, frontier = set(), {os.getpid()}
    while frontier:
        family |= frontier
        frontier = {pid for pid, (ppid, _, _) in procs.items() if ppid in frontier} - family
    seconds: Counter = Counter()
    for pid in family - {os.getpid()}:
        _, cmdline, cpu = procs[pid]
        seconds[next((r for key, r in ROLES if key in cmdline), "other Ray")] += cpu
    return seconds


def run_under_ray_train(cfg: Config, name: str, log: Path) -> dict:
    """The same job as a 1-worker TorchTrainer; epoch times come from the reported metrics, and the CPU seconds each
    kind of Ray process used meanwhile (processes that end during the run are missed: Ray keeps its workers)."""
    from hsakd_ray.train.job_spec import Job, read_checkpoint_files
    from hsakd_ray.train.trainer import build_trainer

    files = read_checkpoint_files(cfg.teacher.checkpoint)
    trainer = build_trainer(Job(cfg, "distill", name, cfg.ray.storage_path, teacher_files=files), [ReportLog(log)])
    before = ray_cpu_seconds()
    start = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - start
    used = ray_cpu_seconds()
    used.subtract(before)
    reports = read_log(log)
    return {"totals": [r["metrics"]["epoch_total_time"] for r in reports],
            "epoch_times": [r["metrics"]["epoch_time"] for r in reports], "wall": wall,
            "cpu": {k: v for k, v in used.items() if v > 0}}


def tune_first_report(cfg: Config, storage: Path) -> dict:
    """Seconds from ``Tuner.fit()`` to the first metrics of a trial that fits a 1-epoch TorchTrainer."""
    from ray import tune

    from hsakd_ray.config import config_to_dict
    from hsakd_ray.train.job_spec import Job, read_checkpoint_files
    from hsakd_ray.train.trainer import build_trainer

    cfg_dict = config_to_dict(cfg)
    cfg_dict["train"]["epochs"] = 1
    files = read_checkpoint_files(cfg.teacher.checkpoint)
    storage.mkdir(parents=True, exist_ok=True)
    log, started = storage / "reports.jsonl", storage / "trial_start"

    def trial(config: dict) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback

        started.write_text(repr(time.time()))
        name = f"trial-{tune.get_context().get_trial_id()}"
        job = Job(config_from_dict(config["cfg"]), "distill", name, str(storage / "train"), teacher_files=files)
        build_trainer(job, [TuneReportCallback(), ReportLog(log)]).fit()

    tuner = tune.Tuner(tune.with_resources(trial, {"cpu": 0.05}), param_space={"cfg": cfg_dict},
                       tune_config=tune.TuneConfig(num_samples=1),
                       run_config=tune.RunConfig(name="startup", storage_path=str(storage / "tune"), verbose=0))
    start = time.time()
    tuner.fit()
    end = time.time()
    first = read_log(log)[0]
    return {"first_report": first["time"] - start, "trial_start": float(started.read_text()) - start,
            "epoch_time": first["metrics"]["epoch_time"], "wall": end - start}


def steady(times: list[float]) -> float:
    """Median after the first epoch (which pays one-time warm-up)."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="wrn_16_2")
    p.add_argument("--student", default="wrn_16_1")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-size", type=int, default=512, help="synthetic training images")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="in-process / Ray Train pairs, alternating")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the job (default: all CPUs)")
    p.add_argument("--no-tune", action="store_true", help="skip the Tune start-up measurement")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 epochs of 128 images, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.train_size, args.rounds = 3, 128, 1
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import ray

    with tempfile.TemporaryDirectory(prefix="hsakd-orchestration-") as tmp:
        root = Path(tmp)
        cfg = job_config(args, make_teacher(args, root / "teacher"), root / "out")
        threads = cfg.train.threads
        print(f"job: distill {args.teacher} -> {args.student}, synthetic {args.train_size} images 32 px, batch "
              f"{args.batch}, {args.epochs} epochs, {threads} threads; load average "
              f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
        ray.init(num_cpus=threads + 1, include_dashboard=False, log_to_driver=False)
        try:
            local, remote = [], []
            for r in range(args.rounds):
                local.append(run_in_process(cfg, root / f"local-{r}"))
                remote.append(run_under_ray_train(cfg, f"overhead-{r}", root / f"train-{r}.jsonl"))
                for name, x in (("in-process", local[-1]), ("Ray Train", remote[-1])):
                    print(f"round {r + 1} {name:10s}: epochs all-in {fmt(x['totals'])}  loop alone "
                          f"{fmt(x['epoch_times'])}  wall {x['wall']:.2f} s", flush=True)
                cpu = remote[-1]["cpu"]
                others = sum(v for k, v in cpu.items() if k != "train worker")
                print(f"round {r + 1} CPU seconds during fit() of Ray's processes alive before and after it (the Train "
                      "worker and controller end with the run and are not counted): " +
                      ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])) +
                      f"; {others:.1f} s = {100 * others / (remote[-1]['wall'] * threads):.1f} % of {threads} cores",
                      flush=True)
            out = {
                "epoch_in_process": statistics.median(steady(x["totals"]) for x in local),
                "epoch_ray_train": statistics.median(steady(x["totals"]) for x in remote),
                "loop_in_process": statistics.median(steady(x["epoch_times"]) for x in local),
                "loop_ray_train": statistics.median(steady(x["epoch_times"]) for x in remote),
                "wall_in_process": statistics.median(x["wall"] for x in local),
                "wall_ray_train": statistics.median(x["wall"] for x in remote),
                "first_report_in_process": statistics.median(x["first_report"] for x in local),
            }
            out["epoch_ratio"] = out["epoch_ray_train"] / out["epoch_in_process"]
            out["wall_ratio"] = out["wall_ray_train"] / out["wall_in_process"]
            out["loop_ratio"] = out["loop_ray_train"] / out["loop_in_process"]
            print(f"steady-state epoch, all in: in-process {out['epoch_in_process']:.3f} s, Ray Train "
                  f"{out['epoch_ray_train']:.3f} s, ratio {out['epoch_ratio']:.3f} "
                  f"({100 * (out['epoch_ratio'] - 1):+.1f} %)")
            print(f"training loop alone: in-process {out['loop_in_process']:.3f} s, Ray Train "
                  f"{out['loop_ray_train']:.3f} s, ratio {out['loop_ratio']:.3f}")
            print(f"whole run ({args.epochs} epochs + eval): in-process {out['wall_in_process']:.2f} s, Ray Train "
                  f"fit {out['wall_ray_train']:.2f} s, ratio {out['wall_ratio']:.3f} "
                  f"(+{out['wall_ray_train'] - out['wall_in_process']:.2f} s)")
            if not args.no_tune:
                tune = tune_first_report(cfg, root / "tune")
                out.update({f"tune_{k}": v for k, v in tune.items()})
                startup = tune["first_report"] - tune["epoch_time"]
                print(f"Tune trial: first report {tune['first_report']:.2f} s after Tuner.fit() (trial function "
                      f"started at {tune['trial_start']:.2f} s; its epoch took {tune['epoch_time']:.2f} s), "
                      f"in-process first report {out['first_report_in_process']:.2f} s; start-up "
                      f"{startup:.2f} s, ratio {tune['first_report'] / out['first_report_in_process']:.2f}")
            print(f"load average at end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        finally:
            ray.shutdown()
    return out


def fmt(times: list[float]) -> str:
    return " ".join(f"{t:.2f}" for t in times)


if __name__ == "__main__":
    main()
