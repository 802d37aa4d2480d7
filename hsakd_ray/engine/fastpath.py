"""The fast path's decisions: precision (``train.precision``), compiling (``train.compile``), CPU threads per worker,
and whether the frozen teacher runs on its own threads. Each ``resolve_*`` is a pure function of what it is given.
The choices are applied around the training step (engine/step.py) by ``engine.loop.train_epoch``, once per epoch.

On a CPU the teacher's forward (it needs no gradients) can run for the next batch while the student trains on this
one, each on its share of the worker's cores (``train.teacher_overlap``). Two independent thread teams need no
barrier per op across the whole worker: on a quiet 2-core machine the WRN-40-2 -> WRN-16-2 step measured 1.14x the
reference with it and 1.11x without (docs/performance.md); on a shared machine, where a core taken away stalls every
op of a multi-threaded team, it should matter more (not measured reproducibly). When one side dominates, the other
would idle, and intra-op threads on the whole step win: ``overlap_threads`` decides from the two sides' FLOPs.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Speed-up per thread credited to intra-op parallelism when deciding: the overlap is chosen while the busier side
# needs less than 1 / 0.85 of the balanced share, i.e. the pair is balanced to within ~18 %.
INTRA_OP_EFFICIENCY = 0.85


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(threads: int | None, device: torch.device) -> int:
    """Set intra-op threads on CPU: ``threads``, or keep what the process has (a Ray worker sets its CPUs).

    Returns the count in effect.
    """
    if device.type == "cpu" and threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def forward_flops(net: nn.Module, image: torch.Tensor) -> int:
    """FLOPs of one eval-mode forward of ``net`` on ``image`` (no gradients, BN statistics untouched)."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(image)
    finally:
        net.train(was_training)
    return counter.get_total_flops()


def chunk_rows(cpu_chunk_rows: int, device: torch.device) -> int:
    """Rows per eval-mode forward on ``device``: ``train.cpu_chunk_rows`` on CPU, whole batches (0) elsewhere."""
    return cpu_chunk_rows if device.type == "cpu" else 0


def forward_in_chunks(net: nn.Module, x: torch.Tensor, rows: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``net(x)`` of an eval-mode HSAKD network, ``rows`` rows at a time (0: all at once), concatenated.

    Rows are independent in eval mode, so the values are the same; on a CPU a chunk's activations stay in cache
    between layers, which a whole 256-row batch of 32 px images does not (docs/performance.md: 1.14x vs 1.07x).
    """
    if rows <= 0 or x.shape[0] <= rows:
        return net(x)
    outs = [net(part) for part in x.split(rows)]
    return torch.cat([o[0] for o in outs]), [torch.cat(q) for q in zip(*(o[1] for o in outs), strict=True)]


def overlap_threads(teacher_flops: float, student_flops: float, threads: int) -> tuple[int, int] | None:
    """(teacher threads, student threads) for running the teacher alongside the student, or None to run them in
    turn on all ``threads`` (one thread, or one side so heavy that the other would idle too long)."""
    if threads < 2 or teacher_flops <= 0 or student_flops <= 0:
        return None
    split = min(((t, threads - t) for t in range(1, threads)),
                key=lambda s: max(teacher_flops / s[0], student_flops / s[1]))
    overlapped = max(teacher_flops / split[0], student_flops / split[1])
    in_turn = (teacher_flops + student_flops) / (threads * INTRA_OP_EFFICIENCY)
    return split if overlapped < in_turn else None


def teacher_split(teacher: nn.Module, student: nn.Module, image_size: int, threads: int) -> tuple[int, int] | None:
    """``overlap_threads`` for a teacher/student pair, counting FLOPs on one rotated CPU image (4 rows).

    The student's step (forward + backward) is taken as three forwards.
    """
    if threads < 2:  # nothing to split: skip counting (two traced forwards at every job's start)
        return None
    device = next(teacher.parameters()).device
    rows = torch.zeros(4, 3, image_size, image_size, device=device)
    return overlap_threads(forward_flops(teacher, rows), 3 * forward_flops(student, rows), threads)


# ---------------------------------------------------------------- precision

# CPU feature flags (as /proc/cpuinfo names them) that give native bf16 arithmetic: bf16 autocast is then about 2x
# the fp32 step (docs/performance.md); without them bf16 is emulated and may be slower than fp32.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# Whether ``auto`` picks bf16 on such CPUs: only because bf16 reached fp32's accuracy within seed noise on real data
# (benchmarks/bf16_accuracy.py, results in benchmarks/results/bf16_accuracy.md). Set False if a rerun shows a cost.
CPU_AUTO_BF16 = True


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo (Linux); else what torch reports about bf16 (empty if nothing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return frozenset({"avx512_bf16"}) if probe is not None and probe() else frozenset()


@dataclass(frozen=True)
class Choice:
    """A resolved fast-path setting and why it was chosen (logged per job, tagged on its MLflow run)."""

    value: str
    reason: str


def resolve_precision(setting: str, device_type: str, flags: frozenset[str] | set[str]) -> Choice:
    """``train.precision`` for a job on ``device_type`` whose CPU has feature ``flags``: "bf16" (autocast) or "fp32"."""
    if setting != "auto":
        return Choice(setting, f"train.precision={setting}")
    if device_type == "cuda":
        return Choice("bf16", "auto: CUDA")
    if device_type == "cpu":
        native = sorted(NATIVE_BF16_FLAGS & set(flags))
        if native and CPU_AUTO_BF16:
            return Choice("bf16", f"auto: CPU with native bf16 ({', '.join(native)})")
        return Choice("fp32", "auto: CPU without native bf16 (no avx512_bf16 / amx_bf16)" if not native
                      else "auto: CPU bf16 off (CPU_AUTO_BF16)")
    return Choice("fp32", f"auto: {device_type}")


def autocast_dtype(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if precision == "bf16" else None


# ---------------------------------------------------------------- compiling

# When ``train.compile=auto`` compiles: on CUDA, once the job's training steps repay the compile time with a margin.
# Per-step gain, measured on an H200 (docs/performance.md; WRN-40-2 -> WRN-16-2, batch 64): the eager default step
# is 64 / 2912 img/s = 22.0 ms, the CUDA-graph step (reduce-overhead) 64 / 8724 img/s (mean of two runs) = 7.3 ms,
# so 14.7 ms saved per step. Compile time: NOT measured (no GPU on this project's machine); taken as 120 s for the
# teacher and student (forward and backward graphs, CUDA-graph capture) and counted twice as a margin:
# 2 * 120 s / 14.7 ms = 16,300 steps, rounded to 16,000. A CIFAR job of batch 64 (782 steps an epoch) compiles
# from 21 epochs on; a digits job (23 steps an epoch) never does. On CPU compiling measured no gain (1.13 vs 1.14).
COMPILE_SECONDS_ASSUMED = 120.0
CUDA_GRAPH_STEP_GAIN_S = 64 / 2912 - 64 / 8724
COMPILE_MIN_STEPS = 16_000


def resolve_compile(setting: bool | str, mode: str, device_type: str, steps: int) -> Choice:
    """``train.compile`` / ``train.compile_mode`` for a job of ``steps`` training steps on ``device_type``: the
    torch.compile mode to use, or "eager"."""
    chosen = mode if mode != "auto" else ("reduce-overhead" if device_type == "cuda" else "default")
    if setting is True:
        return Choice(chosen, "train.compile=true")
    if setting is False:
        return Choice("eager", "train.compile=false")
    if device_type != "cuda":
        return Choice("eager", f"auto: eager on {device_type} (compiling measured no gain on CPU)")
    if steps < COMPILE_MIN_STEPS:
        return Choice("eager", f"auto: {steps} steps < {COMPILE_MIN_STEPS} (too short to repay compiling)")
    return Choice(chosen, f"auto: {steps} steps >= {COMPILE_MIN_STEPS}")


def compile_or_eager(modules: list[nn.Module], mode: str, warn: Callable[[str], None] = warnings.warn) -> str:
    """``torch.compile`` every module in place with ``mode``; "eager" with a warning if compiling fails.

    A failure when the compiled graph first runs (a backend error) also falls back to eager: dynamo's
    ``suppress_errors`` runs the frame eagerly and logs it. Returns the mode in effect.
    """
    try:
        for module in modules:
            module.compile(mode=mode)
    except Exception as exc:  # noqa: BLE001 -- any compile failure must leave a working eager job
        for module in modules:
            module._compiled_call_impl = None  # what nn.Module.compile set: back to the eager forward
        warn(f"torch.compile failed, training eagerly instead: {type(exc).__name__}: {exc}")
        return "eager"
    torch._dynamo.config.suppress_errors = True
    return mode

