"""Does bf16 autocast cost accuracy? fp32 against bf16 on scikit-learn's handwritten digits, 3 seeds, same budget.

Per seed and precision (``train.precision=fp32`` or ``bf16``, the bf16 autocast that ``auto`` picks on CUDA and on
CPUs with native bf16): a resnet14 teacher (heads after every stage) trains on the whole digits training split, then
an HSAKD resnet8 student learns from that teacher on a class-stratified few-shot subset, both in that precision.
Everything else (data split, initial weights, batch order, augmentation draws) is the same seed for both
precisions. Scores: final-epoch top-1 on the digits test split (359 images, one image = 0.28 points). In process
via ``run_job``: no Ray. The losses (soft targets, KL, CE) are fp32 under autocast (hsakd_ray/distill/losses.py).

    nice .venv/bin/python benchmarks/bf16_accuracy.py     # ~10-15 CPU-minutes; writes results/bf16_accuracy.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from digits_methods import mean_std, save_final_epoch, write_atomically

from hsakd_ray.config import load_config
from hsakd_ray.engine import Runtime, run_job
from hsakd_ray.engine.precision import cpu_flags

PRECISIONS = ("fp32", "bf16")
RESULTS = Path(__file__).resolve().parent / "results" / "bf16_accuracy.md"
ONE_IMAGE = 100 / 359  # points of test top-1 per test image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher", default="resnet14")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--student-epochs", type=int, default=30)
    p.add_argument("--few-shot", type=float, default=0.25, help="fraction of the training split the student sees")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def base_overrides(args: argparse.Namespace, seed: int, precision: str) -> list[str]:
    return ["data.name=digits", f"data.image_size={args.image_size}", f"data.split_seed={seed}",
            f"teacher.arch={args.teacher}", "teacher.aux_stages=all", f"student.arch={args.student}",
            "student.aux_stages=all", f"optim.lr={args.lr}", "optim.schedule=cosine", "optim.milestones=[]",
            f"train.batch_size={args.batch_size}", f"train.seed={seed}", "train.device=cpu",
            f"train.precision={precision}", "train.compile=false"]


def run(cfg, kind: str, report=None) -> tuple[float, float, str]:
    """(final test top-1, CPU seconds, the precision the job resolved to)."""
    start = time.process_time()
    metrics = run_job(cfg, kind, Runtime(device=torch.device("cpu"), report=report, log=lambda line: None))
    return metrics["test/top1"], time.process_time() - start, metrics["precision"]


def verdict(fp32: list[float], bf16: list[float]) -> str:
    """No accuracy cost: bf16's mean is not below fp32's by more than the seed noise (the larger of the two seed
    stds, and at least one test image). A bf16 mean above fp32's is no cost; it is not claimed as a gain either."""
    gap = statistics.mean(bf16) - statistics.mean(fp32)
    noise = max(statistics.stdev(fp32), statistics.stdev(bf16), ONE_IMAGE) if len(fp32) > 1 else ONE_IMAGE
    if gap < -noise:
        result = "bf16 COSTS accuracy: below fp32 by more than the seed noise"
    elif gap > noise:
        result = (f"no accuracy cost; bf16 is above fp32 by more than the seed noise ({gap / ONE_IMAGE:.1f} test "
                  f"images with {len(fp32)} seeds: not claimed as a gain)")
    else:
        result = "no accuracy cost: within seed noise"
    return f"bf16 - fp32 = {gap:+.2f} points; seed noise (larger std, at least one image) {noise:.2f}: {result}"


def table(args, results: dict, seconds: dict, wall: float, cpu: float) -> str:
    flags = sorted({"avx512_bf16", "amx_bf16", "amx_tile"} & cpu_flags())
    lines = [
        f"# bf16 autocast against fp32 on digits ({len(args.seeds)} seeds)",
        "",
        f"Test top-1 (%) on the digits test split (359 images; one image = {ONE_IMAGE:.2f} points), final epoch, "
        f"mean ± sample std over seeds {', '.join(map(str, args.seeds))}.",
        "",
        f"- teacher: {args.teacher} with heads after every stage, {args.teacher_epochs} epochs on the whole training "
        f"split; student: {args.student}, HSAKD (heads after every stage, T = 3, alpha = beta = 1) from the teacher "
        f"of the same seed and precision, {args.student_epochs} epochs on a few-shot subset "
        f"(`data.few_shot_ratio` {args.few_shot})",
        f"- images {args.image_size} px; SGD lr {args.lr}, Nesterov momentum 0.9, weight decay 5e-4, cosine "
        f"schedule, batch {args.batch_size} images (x4 rows with rotations); losses in fp32 in both precisions",
        f"- CPU: torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, native bf16 "
        f"flags: {', '.join(flags) or 'none'}; {args.threads} thread(s)",
        f"- whole run {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU",
        f"- command: `nice .venv/bin/python benchmarks/bf16_accuracy.py --seeds {' '.join(map(str, args.seeds))} "
        f"--teacher-epochs {args.teacher_epochs} --student-epochs {args.student_epochs} --few-shot {args.few_shot}`",
        "",
        "| network | precision | top-1 mean ± std | per seed | CPU s per run |",
        "|---|---|---|---|---|",
    ]
    for role in ("teacher", "student"):
        name = f"teacher {args.teacher}" if role == "teacher" else f"student {args.student} (hsakd)"
        for precision in PRECISIONS:
            values = results[role][precision]
            per_run = statistics.mean(seconds[role][precision])
            lines.append(f"| {name} | {precision} | {mean_std(values)} | {', '.join(f'{v:.2f}' for v in values)} "
                         f"| {per_run:.0f} |")
    lines.append("")
    for role in ("teacher", "student"):
        lines.append(f"- {role}: {verdict(results[role]['fp32'], results[role]['bf16'])}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {role: {p: [] for p in PRECISIONS} for role in ("teacher", "student")}
    seconds = {role: {p: [] for p in PRECISIONS} for role in ("teacher", "student")}
    wall, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="bf16-teachers-") as tmp:
        for seed in args.seeds:
            for precision in PRECISIONS:
                base = base_overrides(args, seed, precision)
                teacher_dir = Path(tmp) / f"teacher-{seed}-{precision}"
                cfg = load_config(None, [*base, f"train.epochs={args.teacher_epochs}"])
                top1, took, used = run(cfg, "teacher", save_final_epoch(teacher_dir, args.teacher_epochs))
                assert used == precision, (used, precision)
                results["teacher"][precision].append(top1)
                seconds["teacher"][precision].append(took)
                print(f"seed {seed} {precision} teacher: {top1:.2f} ({took:.0f} CPU s)", flush=True)
                cfg = load_config(None, [*base, f"train.epochs={args.student_epochs}",
                                         f"data.few_shot_ratio={args.few_shot}", "distill.method=hsakd",
                                         f"teacher.checkpoint={teacher_dir}"])
                top1, took, used = run(cfg, "distill")
                results["student"][precision].append(top1)
                seconds["student"][precision].append(took)
                print(f"seed {seed} {precision} student: {top1:.2f} ({took:.0f} CPU s)", flush=True)
    text = table(args, results, seconds, time.perf_counter() - wall, time.process_time() - cpu)
    write_atomically(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
