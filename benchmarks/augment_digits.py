"""Evidence for ``data.augment: auto`` on small images: scikit-learn's handwritten digits written as grey PNG class
folders (train/ and val/, the on-disk ImageFolder format), trained with each augmentation policy, same budget.

The 8x8 digits are upscaled to ``--size`` px and split 80/20 by class exactly as the ``digits`` dataset splits them;
``val/`` is the 359-image test split. Each policy trains the same network from the same seed for the same epochs,
in process via ``run_job`` (no Ray), and is scored by its final-epoch top-1 on val/. Policies:

- ``auto``: the default (crop with padding, no flip at this size, mean/std computed from the training images);
- ``auto + flip``: the same with the horizontal flip (``data.flip: true``), as CIFAR is trained;
- ``none``: no augmentation;
- ``old default``: what an image folder got before, RandomResizedCrop(0.08-1) + flip and ImageNet's statistics
  (at ``--size`` px; it also resized to 224 px by default, not reproduced here).

    .venv/bin/python benchmarks/augment_digits.py      # ~10 CPU-minutes; writes results/augment_digits.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from digits_methods import write_atomically
from PIL import Image

from hsakd_ray.config import load_config
from hsakd_ray.data.memory import DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION
from hsakd_ray.data.splits import stratified_split
from hsakd_ray.data.transforms import IMAGENET_STATS
from hsakd_ray.engine import Runtime, run_job

RESULTS = Path(__file__).resolve().parent / "results" / "augment_digits.md"
POLICIES: dict[str, list[str]] = {
    "auto (default)": [],
    "auto + flip": ["data.flip=true"],
    "none": ["data.augment=none"],
    "old default": ["data.augment=resized_crop_flip", f"data.mean={list(IMAGENET_STATS[0])}",
                    f"data.std={list(IMAGENET_STATS[1])}"],
}


def write_digits_folders(root: Path, size: int) -> Path:
    """The digits as grey ``size`` px PNGs in ``root``/{train,val}/<digit>/<index>.png; returns ``root``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, val = stratified_split(digits.target.tolist(), DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    for split, indices in (("train", train), ("val", val)):
        for i in indices:
            pixels = (digits.images[i] * 255 / 16).round().astype(np.uint8)
            path = root / split / str(digits.target[i]) / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").resize((size, size), Image.BILINEAR).save(path)
    return root


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arch", default="resnet8")
    p.add_argument("--kind", choices=["ce", "teacher"], default="ce",
                   help="ce: the network alone (distill.method=ce); teacher: with rotations and heads (4x the cost)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def top1(root: Path, args: argparse.Namespace, seed: int, policy: list[str]) -> float:
    """Final-epoch top-1 (%) on val/ of one run."""
    net = "student" if args.kind == "ce" else "teacher"
    cfg = load_config(None, [
        "data.name=imagefolder", f"data.root={root}", f"{net}.arch={args.arch}", "distill.method=ce",
        f"optim.lr={args.lr}", "optim.schedule=cosine", "optim.milestones=[]", f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}", f"train.seed={seed}", "train.device=cpu", "train.precision=fp32",
        *policy])
    metrics = run_job(cfg, "distill" if args.kind == "ce" else "teacher", Runtime(device=torch.device("cpu")))
    return metrics["test/top1"]


def table(args: argparse.Namespace, results: dict[str, list[float]], cpu_seconds: float) -> str:
    seeds = " ".join(map(str, args.seeds))
    lines = [
        f"# Augmentation policies on digits as a {args.size} px grey PNG image folder",
        "",
        f"Top-1 (%) on val/ (the 359-image digits test split), final epoch, mean ± sample std over seeds {seeds}.",
        f"{args.arch} ({'alone, cross-entropy' if args.kind == 'ce' else 'teacher job: rotations + heads'}), "
        f"{args.epochs} epochs on train/ (1,438 images), batch {args.batch_size}, SGD lr {args.lr} cosine. "
        f"{cpu_seconds / 60:.1f} CPU-minutes.",
        f"Command: `.venv/bin/python benchmarks/augment_digits.py --kind {args.kind} --arch {args.arch} "
        f"--epochs {args.epochs} --size {args.size} --seeds {seeds}`",
        "",
        "| policy | top-1 mean ± std | per seed |",
        "|---|---|---|",
    ]
    for name, values in results.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        per_seed = ", ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {name} | {statistics.mean(values):.2f} ± {spread:.2f} | {per_seed} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu_start = time.process_time()
    results: dict[str, list[float]] = {name: [] for name in POLICIES}
    with tempfile.TemporaryDirectory(prefix="digits-folder-") as tmp:
        root = write_digits_folders(Path(tmp), args.size)
        for seed in args.seeds:
            for name, policy in POLICIES.items():
                results[name].append(top1(root, args, seed, policy))
                print(f"seed {seed} {name}: {results[name][-1]:.2f}", flush=True)
    text = table(args, results, time.process_time() - cpu_start)
    write_atomically(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
