"""The quickstart sweep with and without shared teacher outputs: what sharing saves a real ``hsakd-ray tune`` run.

Runs ``hsakd-ray tune search_spaces/quickstart.yaml`` twice, each in its own temporary directory (local sqlite MLflow
store, local Ray): once with ``tune.share_teacher: false`` written into a copy of the space, once as shipped (``auto``:
on for CPU trials). The space's random search is seeded (``tune.seed``), so both sweeps try the same configs. Read
from MLflow per sweep: each trial's ``compute/cpu_seconds`` (CPU-seconds of its Train worker processes, running
total) and ``compute/wall_seconds``, its epochs, and the parent's ``teacher_cache/hit_fraction``. The teacher runs
(trained before the sweep, and on the whole training set after it) cost the same in both and are not counted.

Printed: per sweep the trials' CPU-seconds, wall seconds, epochs and the command's own wall time; CPU-seconds per
trial-epoch (ASHA may stop a different number of trials in the two runs); last line ``ratio: R`` = the trials'
CPU-seconds with sharing / without. Each sweep takes several minutes; nothing else should run Ray meanwhile.

    python benchmarks/quickstart_sharing.py
    python benchmarks/quickstart_sharing.py --space search_spaces/quickstart.yaml --keep DIR
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def run_sweep(space: Path, folder: Path, share: bool | None) -> dict:
    """One ``hsakd-ray tune`` run in ``folder``; ``share`` None keeps the space's setting. Returns MLflow's figures."""
    from mlflow.tracking import MlflowClient

    folder.mkdir(parents=True)
    raw = yaml.safe_load(space.read_text())
    if share is not None:
        raw.setdefault("tune", {})["share_teacher"] = share
    copy = folder / space.name
    copy.write_text(yaml.safe_dump(raw, sort_keys=False))
    cli = shutil.which("hsakd-ray") or str(Path(sys.executable).parent / "hsakd-ray")
    start = time.monotonic()
    with open(folder / "log.txt", "w") as log:
        code = subprocess.run([cli, "tune", str(copy)], cwd=folder, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - start
    if code != 0:
        tail = (folder / "log.txt").read_text()[-3000:]
        raise SystemExit(f"hsakd-ray tune failed (exit {code}) in {folder}:\n{tail}")

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(raw["base"]["tracking"]["experiment"])
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    trials = [r for r in runs if r.data.tags.get("hsakd.kind") == "trial"]
    (parent,) = [r for r in runs if r.data.tags.get("hsakd.kind") == "tune"]

    def last(run, key: str) -> float:
        history = client.get_metric_history(run.info.run_id, key)
        return max(history, key=lambda m: m.step).value if history else 0.0

    epochs = sum(len(client.get_metric_history(t.info.run_id, "val/top1")) for t in trials)
    return {"command_wall_s": wall, "trials": len(trials), "epochs": epochs,
            "cpu_s": sum(last(t, "compute/cpu_seconds") for t in trials),
            "wall_s": sum(last(t, "compute/wall_seconds") for t in trials),
            "hit_fraction": parent.data.metrics.get("teacher_cache/hit_fraction", 0.0),
            "summary": parent.data.tags.get("teacher_cache.summary", "no sharing")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    ap.add_argument("--keep", help="keep both runs' folders (logs, MLflow, Ray results) under this directory")
    args = ap.parse_args()
    space = Path(args.space).resolve()
    print(f"space: {space}; CPUs here: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    base = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="quickstart-sharing-"))
    try:
        arms = {}
        for name, share in (("off", False), ("on", None)):
            r = arms[name] = run_sweep(space, base / f"sharing-{name}", share)
            print(f"sharing {name + ':':4} trials' CPU {r['cpu_s']:7.1f} s, trials' wall {r['wall_s']:7.1f} s over "
                  f"{r['trials']} trials / {r['epochs']} epochs ({r['cpu_s'] / max(r['epochs'], 1):.1f} CPU-s per "
                  f"trial-epoch); command wall {r['command_wall_s']:.0f} s; teacher outputs read "
                  f"{r['hit_fraction']:.0%} ({r['summary']}); load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    off, on = arms["off"], arms["on"]
    per_epoch = (on["cpu_s"] / max(on["epochs"], 1)) / (off["cpu_s"] / max(off["epochs"], 1))
    print(f"trials' wall ratio {on['wall_s'] / off['wall_s']:.3f}; CPU per trial-epoch ratio {per_epoch:.3f}")
    print(f"ratio: {on['cpu_s'] / off['cpu_s']:.3f}")


if __name__ == "__main__":
    main()
