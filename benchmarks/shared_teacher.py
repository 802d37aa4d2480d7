"""Cost of a sweep with and without shared teacher outputs (engine/teacher_cache.py, ``tune.share_teacher``).

The same sweep runs with sharing off and on, interleaved (off, on, off, on...): ``--trials`` distillation trials of
``--teacher`` -> ``--student`` on synthetic 32 px data, ``--parallel`` of them side by side, each in its own process
running the engine's ``run_job`` (the code a Ray Train worker runs) with one intra-op thread, as a 1-CPU Tune trial
does. Trials differ in the hyperparameters a sweep searches (temperature, alpha, lr), so they share one data stream.
The teacher is a randomly initialised checkpoint (its cost, not its accuracy, matters here). Ray's per-trial
start-up (~20 s per worker group, README Performance) is left out: it is the same with and without sharing.

Printed per sweep: wall seconds, CPU-seconds of the trial processes, and the share of teacher forwards read from the
store; the last line is ``ratio: R`` = median over repetitions of (CPU-seconds with sharing / without).

    python benchmarks/shared_teacher.py                      # 8 trials, 2 side by side, resnet32x4 -> resnet8x4
    python benchmarks/shared_teacher.py --quick              # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRIAL = """
import json, sys, torch
torch.set_num_threads(1)
from hsakd_ray.config import config_from_dict
from hsakd_ray.engine import Runtime, run_job
raw, store = json.loads(sys.argv[1]), json.loads(sys.argv[2])
last = run_job(config_from_dict(raw), "distill", Runtime(teacher_store=store))
print(json.dumps({k: v for k, v in last.items() if k.startswith("teacher_cache/")}))
"""


def make_teacher(arch: str, classes: int, folder: Path) -> str:
    import torch

    from hsakd_ray.config import dump_config
    from hsakd_ray.engine import write_checkpoint
    from hsakd_ray.models import build_model

    torch.manual_seed(0)
    net = build_model(arch, classes, "all")
    meta = {"kind": "teacher", "arch": arch, "num_classes": classes, "aux_stages": list(net.aux_stages),
            "epoch": 0, "metrics": {}, "dataset": "synthetic"}
    write_checkpoint(folder, model_state=net.state_dict(), meta=meta, config_yaml=dump_config(_base(arch, arch, 0)))
    return str(folder)


def _base(teacher: str, student: str, images: int, epochs: int = 1, batch: int = 64) -> object:
    from hsakd_ray.config import config_from_dict

    return config_from_dict(_raw(teacher, student, None, images, epochs, batch, {}))


def _raw(teacher: str, student: str, ckpt: str | None, images: int, epochs: int, batch: int, params: dict) -> dict:
    raw = {"data": {"name": "synthetic", "image_size": 32, "synthetic_train_size": max(images, 1),
                    "synthetic_test_size": 64, "synthetic_classes": 10},
           "teacher": {"arch": teacher, "checkpoint": ckpt}, "student": {"arch": student},
           "optim": {"schedule": "constant", "milestones": [], "lr": params.get("lr", 0.05)},
           "distill": {"temperature": params.get("temperature", 3.0), "alpha": params.get("alpha", 1.0)},
           "train": {"epochs": epochs, "batch_size": batch, "device": "cpu", "threads": 1}}
    return raw


def sweep(args, ckpt: str, store_root: str | None) -> dict:
    """Run every trial, ``args.parallel`` at a time; returns wall and CPU seconds and the hit fraction."""
    trials = [{"temperature": 2.0 + i % 4, "alpha": 0.5 + 0.25 * (i % 3), "lr": 0.02 * (1 + i % 2)}
              for i in range(args.trials)]
    store = json.dumps({"root": store_root} if store_root else None)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    running: list[subprocess.Popen] = []
    outputs: list[dict] = []
    pending = list(trials)

    def reap(block: bool) -> None:
        for p in list(running):
            if block or p.poll() is not None:
                out, _ = p.communicate()
                if p.returncode:
                    raise SystemExit(f"a trial failed (exit {p.returncode})")
                outputs.append(json.loads(out.strip().splitlines()[-1]) if out.strip() else {})
                running.remove(p)
                if not block:
                    return

    while pending or running:
        if pending and len(running) < args.parallel:
            raw = _raw(args.teacher, args.student, ckpt, args.images, args.epochs, args.batch, pending.pop(0))
            running.append(subprocess.Popen([sys.executable, "-c", TRIAL, json.dumps(raw), store], env=env,
                                            stdout=subprocess.PIPE, text=True))
            continue
        time.sleep(0.05)
        reap(block=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    hits = sum(o.get("teacher_cache/hits_total", 0.0) for o in outputs)
    steps = sum(o.get("teacher_cache/steps_total", 0.0) for o in outputs)
    return {"wall_s": wall, "cpu_s": cpu, "hit_fraction": hits / steps if steps else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="resnet32x4")
    ap.add_argument("--student", default="resnet8x4")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--images", type=int, default=256, help="training images per trial epoch")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1, help="off/on pairs, interleaved")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.teacher, args.student, args.trials, args.images, args.batch, args.epochs = \
            "resnet8", "resnet8", 3, 32, 16, 1
    print(f"sweep: {args.trials} trials of {args.teacher} -> {args.student}, {args.parallel} side by side, "
          f"{args.epochs} epochs x {args.images} images (batch {args.batch}, 32 px, synthetic), 1 thread per trial; "
          f"CPUs here: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    ratios = []
    with tempfile.TemporaryDirectory(prefix="shared-teacher-") as tmp:
        ckpt = make_teacher(args.teacher, 10, Path(tmp) / "teacher")
        for rep in range(args.reps):
            off = sweep(args, ckpt, None)
            print(f"rep {rep + 1} sharing off: wall {off['wall_s']:.1f} s, CPU {off['cpu_s']:.1f} s", flush=True)
            on = sweep(args, ckpt, str(Path(tmp) / f"store-{rep}"))
            print(f"rep {rep + 1} sharing on:  wall {on['wall_s']:.1f} s, CPU {on['cpu_s']:.1f} s, "
                  f"teacher outputs read from the store: {on['hit_fraction']:.0%}", flush=True)
            ratios.append(on["cpu_s"] / off["cpu_s"])
            print(f"rep {rep + 1} wall ratio {on['wall_s'] / off['wall_s']:.3f}, CPU ratio {ratios[-1]:.3f}",
                  flush=True)
    print(f"ratio: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
