"""Evidence on real data: ce / kd / hsakd students of one teacher on scikit-learn's handwritten digits, 3 seeds.

Per seed: a teacher (all heads) trains on the whole digits training split; then three resnet8 students train on the
same class-stratified few-shot subset of it, each with the same budget: ``ce`` (the student alone), ``kd`` (Hinton,
T = 3) and ``hsakd`` (heads after every stage, T = 3, alpha = beta = 1). Every network is scored by its final-epoch
top-1 on the digits test split (no checkpoint is picked by test accuracy). In process via ``run_job``: no Ray.

    .venv/bin/python benchmarks/digits_methods.py            # ~10 min on 2 CPU cores; writes results/digits_methods.md
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from hsakd_ray.config import Config, load_config
from hsakd_ray.engine import Runtime, run_job

METHODS = ("ce", "kd", "hsakd")
RESULTS = Path(__file__).resolve().parent / "results" / "digits_methods.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher", default="resnet14")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--student-epochs", type=int, default=30)
    p.add_argument("--few-shot", type=float, default=0.25, help="fraction of the training split the students see")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def base_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    return ["data.name=digits", f"data.image_size={args.image_size}", f"data.split_seed={seed}",
            f"teacher.arch={args.teacher}", "teacher.aux_stages=all", f"student.arch={args.student}",
            "student.aux_stages=all", f"optim.lr={args.lr}", "optim.schedule=cosine", "optim.milestones=[]",
            f"train.batch_size={args.batch_size}", f"train.seed={seed}", "train.device=cpu"]


def save_final_epoch(directory: Path, epochs: int):
    """A reporter that writes only the last epoch's checkpoint: the teacher students learn from is not test-picked."""

    def report(epoch: int, metrics: dict, save) -> None:
        if epoch == epochs:
            save(directory)

    return report


def run(cfg: Config, kind: str, report=None) -> tuple[float, float]:
    start = time.perf_counter()
    metrics = run_job(cfg, kind, Runtime(device=torch.device("cpu"), report=report))
    return metrics["test/top1"], time.perf_counter() - start


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def table(args: argparse.Namespace, results: dict[str, list[float]], seconds: float, cpu_seconds: float) -> str:
    n_seeds = len(args.seeds)
    header = (
        f"# ce / kd / hsakd students on digits ({n_seeds} seeds)\n\n"
        f"Test top-1 (%) on the digits test split (359 images), final epoch, mean ± sample std over seeds "
        f"{', '.join(map(str, args.seeds))}.\n\n"
        f"- teacher: {args.teacher} with heads after every stage, {args.teacher_epochs} epochs on the whole training "
        f"split (1,438 images)\n"
        f"- students: {args.student}, {args.student_epochs} epochs on a class-stratified few-shot subset "
        f"(`data.few_shot_ratio` {args.few_shot}, drawn with `data.split_seed` = seed, the same for the three "
        f"methods)\n"
        f"- images {args.image_size} px; SGD lr {args.lr}, Nesterov momentum 0.9, weight decay 5e-4, cosine schedule, "
        f"batch {args.batch_size} images (x4 rows with rotations); kd and hsakd: T = 3, alpha = beta = 1\n"
        f"- {args.threads} CPU thread(s); whole run {seconds / 60:.1f} min wall, {cpu_seconds / 60:.1f} min CPU "
        f"(the wall time grows when other jobs share the machine)\n"
        f"- command: `.venv/bin/python benchmarks/digits_methods.py "
        f"--seeds {' '.join(map(str, args.seeds))} --teacher {args.teacher} --student {args.student} "
        f"--teacher-epochs {args.teacher_epochs} --student-epochs {args.student_epochs} --few-shot {args.few_shot} "
        f"--batch-size {args.batch_size}`\n\n"
    )
    rows = ["| network | top-1 mean ± std | per seed |", "|---|---|---|"]
    names = {"teacher": f"teacher {args.teacher} (full data)", "ce": f"student {args.student}: ce (alone)",
             "kd": f"student {args.student}: kd", "hsakd": f"student {args.student}: hsakd"}
    for key in ("teacher", *METHODS):
        values = results[key]
        rows.append(f"| {names[key]} | {mean_std(values)} | {', '.join(f'{v:.2f}' for v in values)} |")
    return header + "\n".join(rows) + "\n"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, list[float]] = {key: [] for key in ("teacher", *METHODS)}
    start, cpu_start = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="digits-teachers-") as tmp:
        for seed in args.seeds:
            base = base_overrides(args, seed)
            teacher_dir = Path(tmp) / f"teacher-{seed}"
            cfg = load_config(None, [*base, f"train.epochs={args.teacher_epochs}"])
            top1, took = run(cfg, "teacher", save_final_epoch(teacher_dir, args.teacher_epochs))
            results["teacher"].append(top1)
            print(f"seed {seed} teacher {args.teacher}: {top1:.2f} ({took:.0f} s)", flush=True)
            for method in METHODS:
                cfg = load_config(None, [*base, f"train.epochs={args.student_epochs}",
                                         f"data.few_shot_ratio={args.few_shot}", f"distill.method={method}",
                                         f"teacher.checkpoint={teacher_dir}"])
                top1, took = run(cfg, "distill")
                results[method].append(top1)
                print(f"seed {seed} {method}: {top1:.2f} ({took:.0f} s)", flush=True)
    text = table(args, results, time.perf_counter() - start, time.process_time() - cpu_start)
    write_atomically(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
