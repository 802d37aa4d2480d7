"""The quickstart's wall time, this code against a baseline commit, measured side by side in one run.

Runs ``hsakd-ray tune search_spaces/quickstart.yaml`` (the space as shipped by each side) ``--rounds`` times per
side, alternating baseline and this working tree so both see the same machine. The baseline is ``git worktree``'d
into a temporary directory and run from there (``PYTHONPATH``, which Ray's processes inherit). Each run has its own
temporary folder (local sqlite MLflow store, local Ray). Per run it prints: the command's wall time, where it went
(seconds to the teacher's MLflow run, the two teacher runs, the sweep's parent run, read from MLflow), the best
trial's val top-1 and the final teacher's test top-1 (the same on both sides when nothing but speed changed), and
the CPU-seconds of the machine's processes during the run by kind (a Ray actor's class, the driver, Ray's
services), read from /proc. Last line ``ratio: R`` = median wall of this tree / median wall of the baseline.

Nothing else should run meanwhile (two Ray instances at once break Ray Train). About 4 minutes per round.

    python benchmarks/quickstart_wall.py --baseline 9276ff4 --rounds 2
    python benchmarks/quickstart_wall.py --rounds 3          # this tree only: no ratio
    python benchmarks/quickstart_wall.py --baseline 3357598 --rounds 1 --no-final-too   # + this tree with --no-final
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from side_by_side import baseline_tree

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env")


def process_kind(cmd: str) -> str:
    if cmd.startswith("ray::"):
        return cmd.split()[0].split(".")[0]  # ray::TrainController.run -> ray::TrainController
    if "hsakd-ray" in cmd or "hsakd_ray.cli" in cmd:
        return "driver (hsakd-ray)"
    return next((name for name in SERVICES if name in cmd), "other")


class CpuByKind:
    """CPU-seconds each process kind used while the run lasted, sampled from /proc every 0.3 s (a process that
    lives under 0.3 s is missed; Ray's processes live seconds at least)."""

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[float, str]] = {}
        self.stop = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")
        self._scan(start=True)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _scan(self, start: bool = False) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            pid = int(entry)
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / self.tick
            self.first.setdefault(pid, cpu if start else 0.0)
            if not cmd and pid in self.last:  # a zombie has no command line: keep the last one seen
                cmd = self.last[pid][1]
            self.last[pid] = (cpu, cmd)

    def _loop(self) -> None:
        while not self.stop.wait(0.3):
            self._scan()

    def finish(self) -> dict[str, tuple[float, int]]:
        self.stop.set()
        self.thread.join()
        used: dict[str, list[float]] = collections.defaultdict(list)
        for pid, (cpu, cmd) in self.last.items():
            if cpu - self.first[pid] >= 0.05:
                used[process_kind(cmd)].append(cpu - self.first[pid])
        return {kind: (sum(v), len(v)) for kind, v in used.items()}


def mlflow_phases(folder: Path, experiment: str) -> dict:
    """Seconds from the first run's start: each teacher run and the sweep's parent; the accuracies."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    by_kind = collections.defaultdict(list)
    for run in runs:
        by_kind[run.data.tags.get("hsakd.kind")].append(run)
    teachers = sorted(by_kind["teacher"], key=lambda r: r.info.start_time)
    (parent,) = by_kind["tune"]
    final = [r for r in teachers if r.data.tags.get("mlflow.runName", "").endswith("final-teacher")]
    finals = [r for r in by_kind["distill"] if r.data.tags.get("hsakd.final") == "true"]  # tune.final's runs
    best = parent.data.metrics.get("best_val/top1", float("nan"))  # the sweep's best trial, best epoch
    return {"teacher_runs_s": [(r.info.end_time - r.info.start_time) / 1000 for r in teachers],
            "sweep_s": (parent.info.end_time - parent.info.start_time) / 1000,
            "final_runs_s": [(r.info.end_time - r.info.start_time) / 1000 for r in finals],
            "first_run_start_ms": min(r.info.start_time for r in runs),
            "best_val_top1": best,
            "final_teacher_test_top1": final[0].data.metrics.get("test/top1") if final else float("nan")}


def run_once(code_root: Path, folder: Path, extra: list[str] = ()) -> dict:
    """One ``hsakd-ray tune quickstart.yaml`` (plus ``extra`` arguments) from ``code_root``'s package and space, in
    ``folder``."""
    folder.mkdir(parents=True)
    space = code_root / "search_spaces" / "quickstart.yaml"
    experiment = yaml.safe_load(space.read_text())["base"]["tracking"]["experiment"]
    env = dict(os.environ, PYTHONPATH=str(code_root))
    cli = [sys.executable, "-c", "import sys; from hsakd_ray.cli import main; sys.exit(main())", "tune", str(space),
           *extra]
    load = os.getloadavg()[0]
    sampler = CpuByKind()
    start_ms, start = time.time() * 1000, time.monotonic()
    with open(folder / "log.txt", "w") as log:
        code = subprocess.run(cli, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - start
    cpu = sampler.finish()
    if code != 0:
        tail = (folder / "log.txt").read_text()[-3000:]
        raise SystemExit(f"hsakd-ray tune failed (exit {code}) in {folder}:\n{tail}")
    phases = mlflow_phases(folder, experiment)
    phases["to_first_run_s"] = (phases.pop("first_run_start_ms") - start_ms) / 1000
    return {"wall_s": wall, "load": load, "cpu": cpu, **phases}


def describe(side: str, r: dict) -> str:
    teachers = " + ".join(f"{s:.1f}" for s in r["teacher_runs_s"])
    finals = " + ".join(f"{s:.1f}" for s in r["final_runs_s"]) or "none"
    top = sorted(r["cpu"].items(), key=lambda kv: -kv[1][0])
    cpu = ", ".join(f"{kind} {sec:.1f} ({n})" for kind, (sec, n) in top if sec >= 1.0)
    return (f"{side:8} wall {r['wall_s']:6.1f} s (load {r['load']:.1f}): {r['to_first_run_s']:.1f} s to the teacher's "
            f"run, teacher runs {teachers} s, sweep run {r['sweep_s']:.1f} s (final runs {finals} s); "
            f"best val top-1 {r['best_val_top1']:.2f}, "
            f"final teacher test top-1 {r['final_teacher_test_top1']:.2f}\n"
            f"         CPU-s by process kind (processes): {cpu}; total "
            f"{sum(sec for sec, _ in r['cpu'].values()):.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", help="a git commit to compare with (run from a temporary worktree)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-final-too", action="store_true",
                    help="also run this tree with --no-final (the sweep without its final runs)")
    ap.add_argument("--keep", help="keep every run's folder (log, MLflow, Ray results) under this directory")
    args = ap.parse_args()
    base = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="quickstart-wall-"))
    walls: dict[str, list[float]] = collections.defaultdict(list)
    with contextlib.ExitStack() as stack:
        if not args.keep:  # registered first, so it runs last: after the baseline's worktree is removed
            stack.callback(shutil.rmtree, base, ignore_errors=True)
        sides = {"this": (ROOT, [])}
        if args.baseline:
            sides = {"baseline": (stack.enter_context(baseline_tree(args.baseline, base)), []), "this": (ROOT, [])}
        if args.no_final_too:
            sides["no-final"] = (ROOT, ["--no-final"])
        described = ", ".join(f"{k} = {root} {' '.join(extra)}".rstrip() for k, (root, extra) in sides.items())
        print(f"CPUs here: {os.cpu_count()}; sides: {described}", flush=True)
        for round_ in range(args.rounds):
            for side, (code_root, extra) in sides.items():
                r = run_once(code_root, base / f"{side}-{round_}", extra)
                walls[side].append(r["wall_s"])
                print(describe(side, r), flush=True)
    for side, values in walls.items():
        print(f"{side}: median wall {statistics.median(values):.1f} s over {len(values)} runs "
              f"({', '.join(f'{v:.0f}' for v in values)})")
    if "baseline" in walls:
        print(f"ratio: {statistics.median(walls['this']) / statistics.median(walls['baseline']):.3f}")
    if "baseline" in walls and "no-final" in walls:
        print(f"ratio without the final runs: "
              f"{statistics.median(walls['no-final']) / statistics.median(walls['baseline']):.3f}")


if __name__ == "__main__":
    main()
