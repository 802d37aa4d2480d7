"""CPU threads of a worker, and whether the frozen teacher's forward runs on its own threads beside the student's
step (``train.teacher_overlap``); forwards in row chunks (``train.cpu_chunk_rows``). Pure decisions and helpers; the
step applies them (engine/loop.py).

On a CPU the teacher's forward (it needs no gradients) can run for the next batch while the student trains on this
one, each on its share of the worker's cores. Two independent thread teams need no barrier per op across the whole
worker: on a quiet 2-core machine the WRN-40-2 -> WRN-16-2 step measured 1.14x the reference with it and 1.11x
without (docs/performance.md); on a shared machine, where a core taken away stalls every op of a multi-threaded team,
it should matter more (not measured reproducibly). When one side dominates, the other would idle, and intra-op
threads on the whole step win: ``overlap_threads`` decides from the two sides' FLOPs.
"""
from __future__ import annotations

import os

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
