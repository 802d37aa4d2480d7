"""Cost of a sweep with and without shared teacher outputs (engine/teacher_cache.py, ``tune.share_teacher``).

The same sweep runs with sharing off and on, interleaved (off, on, off, on...): ``--trials`` distillation trials of
``--teacher`` -> ``--student`` on synthetic 32 px data, ``--parallel`` of them side by side, each in its own process
running the engine's ``run_job`` (the code a Ray Train worker runs) with one intra-op thread, as a 1-CPU Tune trial
does. Trials differ in the hyperparameters a sweep searches (temperature, alpha, lr), so they share one data stream.
The teacher is a randomly initialised checkpoint (its cost, not its accuracy, matters here). Ray's per-trial
start-up (docs/performance.md, "What Ray Train and Tune add") is left out: it is the same with and without sharing.

Each trial process's CPU time is split at the start of its first training epoch: start-up (interpreter, imports,
dataset, models, the step's set-up) is a fixed cost per trial that sharing cannot remove, training (every epoch's
steps, evaluation, reporting) is what it shares. Both are printed; the default workload (24 steps of 32 images per
trial, ~6 minutes for both sweeps on 2 quiet cores) keeps start-up near 5 % of a trial, so the sweep's cost is mostly
training, as in a real sweep. The teacher forward's share of a step is measured first (``teacher_share``): it gives
the best ratio sharing can reach, 1 - share + share / trials.

Printed per sweep: wall seconds, CPU-seconds of the trial processes (start-up and training), the share of teacher
forwards read from the store and the seconds sharing itself cost the trials (hashing rows, file I/O; waiting on
another trial's claim is wall time, not CPU). The last line is ``ratio: R`` = median over repetitions of (the
sweep's CPU-seconds with sharing / without), start-up included.

    python benchmarks/shared_teacher.py                 # 8 trials of resnet32x4 -> resnet8x4, 2 side by side
    python benchmarks/shared_teacher.py --quick         # smoke test (~1 min)
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
import json, resource, sys, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
import torch
torch.set_num_threads(1)
from hsakd_ray.config import config_from_dict
from hsakd_ray.engine import Runtime, run_job
import hsakd_ray.engine.runner as runner
marks = {}
if hasattr(runner, "train_epoch"):  # the CPU spent before the first epoch's training: the trial's start-up
    train_epoch = runner.train_epoch
    def marked(*args, **kwargs):
        marks.setdefault("startup_cpu", cpu())
        return train_epoch(*args, **kwargs)
    runner.train_epoch = marked
raw, store = json.loads(sys.argv[1]), json.loads(sys.argv[2])
seconds = {"store": 0.0, "wait": 0.0}
def report(epoch, metrics, save):
    seconds["store"] += metrics.get("teacher_cache/store_seconds", 0.0)
    seconds["wait"] += metrics.get("teacher_cache/wait_seconds", 0.0)
last = run_job(config_from_dict(raw), "distill", Runtime(teacher_store=store, report=report))
out = {k: v for k, v in last.items() if k.startswith("teacher_cache/")}
out.update(marks, end_cpu=cpu(), store_s=seconds["store"], wait_s=seconds["wait"], precision=last.get("precision"))
print(json.dumps(out))
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


def _raw(teacher: str, student: str, ckpt: str | None, images: int, epochs: int, batch: int, params: dict,
         precision: str = "auto") -> dict:
    raw = {"data": {"name": "synthetic", "image_size": 32, "synthetic_train_size": max(images, 1),
                    "synthetic_test_size": 64, "synthetic_classes": 10},
           "teacher": {"arch": teacher, "checkpoint": ckpt}, "student": {"arch": student},
           "optim": {"schedule": "constant", "milestones": [], "lr": params.get("lr", 0.05)},
           "distill": {"temperature": params.get("temperature", 3.0), "alpha": params.get("alpha", 1.0)},
           "train": {"epochs": epochs, "batch_size": batch, "device": "cpu", "threads": 1, "precision": precision}}
    return raw


def teacher_share(args) -> tuple[float, str]:
    """The teacher forward's share of one training step's CPU time (1 thread, ``--precision`` as resolved here, a
    rotated batch of ``args.batch`` images), measured on random weights: what sharing can save at most."""
    import torch

    from hsakd_ray import distill as D
    from hsakd_ray.engine.precision import cpu_flags, resolve_precision
    from hsakd_ray.models import build_model

    precision = resolve_precision(args.precision, "cpu", cpu_flags()).value
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = build_model(args.teacher, 10, "all").eval().requires_grad_(False)
    student = build_model(args.student, 10, "all").train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    rows = D.rotate_batch(x, y)[0]
    autocast = {"device_type": "cpu", "dtype": torch.bfloat16, "enabled": precision == "bf16"}

    def forward():
        with torch.inference_mode(), torch.autocast(**autocast):
            logits, aux = teacher(rows)
        return logits.clone(), [q.clone() for q in aux]

    def step(t_logits, t_aux):
        with torch.autocast(**autocast):
            s_logits, s_aux = student(rows)
            n = min(len(s_aux), len(t_aux))
            loss = D.student_loss(s_logits, s_aux[:n], t_logits, t_aux[:n], y)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(*forward())  # warm-up: kernels, allocator
    t_cpu = s_cpu = 0.0
    for _ in range(3):
        a = time.process_time()
        out = forward()
        b = time.process_time()
        step(*out)
        t_cpu, s_cpu = t_cpu + b - a, s_cpu + time.process_time() - b
    return t_cpu / (t_cpu + s_cpu), precision


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
            raw = _raw(args.teacher, args.student, ckpt, args.images, args.epochs, args.batch, pending.pop(0),
                       args.precision)
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
    marked = all("startup_cpu" in o for o in outputs)
    startup = sum(o["startup_cpu"] for o in outputs) if marked else float("nan")
    return {"wall_s": wall, "cpu_s": cpu, "startup_s": startup, "train_s": cpu - startup,
            "hit_fraction": hits / steps if steps else 0.0, "store_s": sum(o.get("store_s", 0.0) for o in outputs),
            "wait_s": sum(o.get("wait_s", 0.0) for o in outputs),
            "precision": ",".join(sorted({str(o.get("precision")) for o in outputs}))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="resnet32x4")
    ap.add_argument("--student", default="resnet8x4")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--images", type=int, default=384, help="training images per trial epoch")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1, help="off/on pairs, interleaved")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="train.precision")
    ap.add_argument("--quick", action="store_true", help="smoke test: 4 trials of 2 epochs x 64 images")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.images, args.epochs = 4, 64, 2
    steps = -(-args.images // args.batch)
    print(f"sweep: {args.trials} trials of {args.teacher} -> {args.student}, {args.parallel} side by side, "
          f"{args.epochs} epochs x {args.images} images ({steps} steps of {args.batch}, 32 px, synthetic), "
          f"1 thread per trial; CPUs here: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    share, precision = teacher_share(args)
    floor = 1 - share + share / args.trials
    print(f"teacher forward: {share:.0%} of a training step's CPU ({precision}, 1 thread, {4 * args.batch} rotated "
          f"rows); so at best, with one trial computing every batch, ratio {floor:.3f}", flush=True)
    ratios, train_ratios = [], []
    with tempfile.TemporaryDirectory(prefix="shared-teacher-") as tmp:
        ckpt = make_teacher(args.teacher, 10, Path(tmp) / "teacher")
        for rep in range(args.reps):
            arms = {}
            for name, store in (("off", None), ("on", str(Path(tmp) / f"store-{rep}"))):
                r = arms[name] = sweep(args, ckpt, store)
                print(f"rep {rep + 1} sharing {name + ':':4} wall {r['wall_s']:6.1f} s, CPU {r['cpu_s']:6.1f} s "
                      f"= start-up {r['startup_s']:5.1f} s + training {r['train_s']:6.1f} s; teacher outputs read "
                      f"from the store {r['hit_fraction']:.0%}; sharing's own cost {r['store_s']:.2f} s "
                      f"(+ {r['wait_s']:.1f} s waiting on claims); precision {r['precision']}; "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
            off, on = arms["off"], arms["on"]
            ratios.append(on["cpu_s"] / off["cpu_s"])
            train_ratios.append(on["train_s"] / off["train_s"])
            print(f"rep {rep + 1} wall ratio {on['wall_s'] / off['wall_s']:.3f}, CPU ratio {ratios[-1]:.3f} "
                  f"(training only {train_ratios[-1]:.3f}; start-up {off['startup_s'] / off['cpu_s']:.0%} of the "
                  f"sweep without sharing)", flush=True)
    print(f"training-only ratio: {statistics.median(train_ratios):.3f}")
    print(f"ratio: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
