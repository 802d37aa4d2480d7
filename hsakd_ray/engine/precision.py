"""``train.precision`` resolved for a job's device: "bf16" (autocast) or "fp32", and why (a ``Choice``, logged per
job and tagged on its MLflow run). A pure function of the setting, the device and the CPU's feature flags."""
from __future__ import annotations

from dataclasses import dataclass

import torch

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
