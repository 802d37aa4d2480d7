"""``train.compile`` resolved for a job (a torch.compile mode or "eager", and why), and compiling that falls back to
eager on any failure."""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from .precision import Choice

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
