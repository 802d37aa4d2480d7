"""The arithmetic ceiling of this machine for the distillation step: GFLOP/s of the 3x3 convolutions that make up
WRN-40-2 / WRN-16-2 (one per stage shape, 64-row chunks, channels_last, forward), in fp32 and bf16, next to the
GFLOP/s the step itself needs (FLOPs of one teacher forward + one student forward and backward, counted by
``torch.utils.flop_counter``). The fp32 step cannot beat the fp32 ceiling: that bounds any fp32 fast path.

    python benchmarks/conv_ceiling.py
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from hsakd_ray.models import build_model

SHAPES = [(32, 32), (64, 16), (128, 8)]  # (channels, side) of WRN-x-2's three stages at 32 px


def conv_gflops(channels: int, side: int, dtype: torch.dtype, rows: int = 64, repeats: int = 20) -> float:
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(dtype, memory_format=torch.channels_last)
    x = torch.randn(rows, channels, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv(x)
        start = time.perf_counter()
        for _ in range(repeats):
            conv(x)
        seconds = (time.perf_counter() - start) / repeats
    return 2 * rows * channels * channels * 9 * side * side / seconds / 1e9


def step_gflop(teacher_arch: str, student_arch: str, classes: int, batch: int, size: int) -> tuple[float, float]:
    """GFLOP of the teacher's forward and of the student's forward + backward on one rotated batch."""
    teacher = build_model(teacher_arch, classes, "all").eval()
    student = build_model(student_arch, classes, "all").train()
    x = torch.randn(4 * batch, 3, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        teacher(x)
    teacher_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        logits, aux = student(x)
        (logits.sum() + sum(q.sum() for q in aux)).backward()
    return teacher_flops / 1e9, counter.get_total_flops() / 1e9


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="wrn_40_2")
    p.add_argument("--student", default="wrn_16_2")
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    print(f"{torch.get_num_threads()} intra-op threads, torch {torch.__version__}")
    for dtype in (torch.float32, torch.bfloat16):
        rates = [conv_gflops(c, s, dtype) for c, s in SHAPES]
        print(f"3x3 conv ceiling {str(dtype):15s} " + "  ".join(f"{c}ch@{s}px {r:6.1f}" for (c, s), r in
                                                              zip(SHAPES, rates, strict=True)) + "  GFLOP/s")
    t, s = step_gflop(args.teacher, args.student, 100, args.batch, 32)
    print(f"one step, batch {args.batch} ({4 * args.batch} rows): teacher forward {t:.0f} GFLOP + student forward "
          f"and backward {s:.0f} GFLOP = {t + s:.0f} GFLOP")
    print(f"so a step at R img/s runs at {(t + s) / args.batch:.2f} * R GFLOP/s")


if __name__ == "__main__":
    main()
