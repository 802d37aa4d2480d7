"""The epoch loops: train (the fast path set up around the task's steps; loss parts accumulated on the device, no
per-step host sync) and evaluate (exact counts over the whole eval set, summed across workers when a process group
is up)."""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from functools import partial

import torch
import torch.distributed as dist

from .. import distill as D
from ..models import HSAKDNet
from .step import Autocast, Outputs, TeacherFn
from .tasks import Task
from .threads import forward_in_chunks


def all_reduce_sums(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum every tensor across workers (no-op outside a process group). Keys must agree across workers."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sums
    keys = sorted(sums)
    flat = torch.stack([sums[k].double() for k in keys])
    dist.all_reduce(flat)
    return dict(zip(keys, flat, strict=True))


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device,
              channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """This thread's intra-op thread count set to ``count`` for the block, and restored after it (also on errors).

    The count is per thread: with torch's OpenMP backend it is OpenMP's thread-count setting of the calling thread
    (``torch.set_num_threads`` calls ``omp_set_num_threads``, and MKL's thread-local setter), and each thread that
    runs a parallel op gets its own team of that size. So this thread and the teacher's look-ahead thread each keep
    their own count, set once, and neither changes the other's. Once per epoch, not per batch: each call also clears
    oneDNN's cached primitives (ATen's ParallelOpenMP.cpp), shared by both threads.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TeacherAhead:
    """The frozen teacher's outputs computed one batch ahead on a thread of its own (``train.teacher_overlap``), so
    the teacher's forward on the next batch overlaps the student's step on this one.

    Used as the step's ``teacher``: called with a batch's views, it returns the outputs computed for them while the
    previous step ran. ``batches`` hands the batches out and starts each next batch's outputs before handing out the
    current one. ``threads``: the look-ahead thread's intra-op count, set once when it starts. The first batch has
    nothing to overlap with: its outputs are computed on the calling thread.
    """

    def __init__(self, teacher: TeacherFn, views: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], threads: int,
                 autocast: Autocast) -> None:
        self.teacher, self.views, self.threads, self.autocast = teacher, views, threads, autocast
        self.pending: deque[Future] = deque()

    def __enter__(self) -> TeacherAhead:
        self.pool = ThreadPoolExecutor(1, initializer=self._start_thread, thread_name_prefix="teacher-ahead")
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()

    def _start_thread(self) -> None:
        torch.get_num_threads()  # torch sets a thread up on its first call (with the last count set anywhere):
        torch.set_num_threads(self.threads)  # done first, so that it cannot undo this count later

    def _outputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Outputs]:
        views = self.views(x, y)
        with self.autocast():  # autocast is per thread: entered on this one too
            return views, self.teacher(views)

    def batches(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, ...]]:
        stream = iter(batches)
        current = next(stream, None)
        if current is None:
            return
        first: Future = Future()
        first.set_result(self._outputs(*current))
        self.pending.append(first)
        for ahead in stream:
            self.pending.append(self.pool.submit(self._outputs, *ahead))
            yield current
            current = ahead
        yield current

    def __call__(self, views: torch.Tensor) -> Outputs:
        expected, outputs = self.pending.popleft().result()
        if not (torch.equal(views, expected) or torch.allclose(views, expected, rtol=0, atol=0, equal_nan=True)):
            raise RuntimeError("the teacher's look-ahead got other rows than the step's views")  # out of order
        return outputs


def train_epoch(task: Task, optimizer: torch.optim.Optimizer, batches: Iterable, device: torch.device,
                channels_last: bool = False, autocast_dtype: torch.dtype | None = None,
                overlap_threads: tuple[int, int] | None = None) -> dict[str, float]:
    """One pass over ``batches``, one ``task.step`` each (engine/step.py); returns mean loss parts (over all workers),
    images seen and seconds taken. No host sync happens inside the loop.

    The fast path is set up here, once, around the steps: batches on ``device`` (in ``channels_last``); each forward
    under ``autocast_dtype``; and with ``overlap_threads`` (the teacher's, the student's intra-op threads), the frozen
    teacher's outputs one batch ahead on a thread of their own (``TeacherAhead``) with this thread's count set for the
    epoch. The steps' arithmetic is the same either way.
    """
    task.train()
    autocast = partial(torch.autocast, device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    teacher = task.teacher_outputs
    stream: Iterable = (to_device(x, y, device, channels_last) for x, y in batches)
    totals: dict[str, torch.Tensor] = {}
    steps, images = 0, 0
    start = time.perf_counter()
    with ExitStack() as around:
        if teacher is not None and overlap_threads is not None:
            around.enter_context(intra_op_threads(overlap_threads[1]))
            teacher = around.enter_context(TeacherAhead(teacher, task.teacher_views, overlap_threads[0], autocast))
            stream = teacher.batches(stream)
        for x, y in stream:
            parts = task.step(x, y, optimizer, teacher, autocast)
            for k, v in parts.items():
                totals[k] = totals[k] + v.detach().float() if k in totals else v.detach().float()
            steps += 1
            images += x.shape[0]
    totals["steps"] = torch.tensor(float(steps), device=device)
    totals["images"] = torch.tensor(float(images), device=device)
    summed = all_reduce_sums(totals)  # one host sync per epoch, here
    seconds = time.perf_counter() - start
    n_steps = max(float(summed.pop("steps")), 1.0)
    n_images = float(summed.pop("images"))
    out = {f"train/{k}": float(v) / n_steps for k, v in summed.items()}
    out["images_per_sec"] = n_images / seconds if seconds > 0 else 0.0
    out["epoch_time"] = seconds
    return out


@torch.inference_mode()
def evaluate(net: HSAKDNet, batches: Iterable, device: torch.device, channels_last: bool = False,
             autocast_dtype: torch.dtype | None = None, chunk_rows: int = 0) -> dict[str, float]:
    """Top-1/top-5 on unrotated images plus per-head accuracies over the rotated rows (docs/method.md, "Evaluation").

    ``chunk_rows``: forward that many rows at a time (``forward_in_chunks``; 0: whole batches)."""
    was_training = net.training
    net.eval()
    sums: dict[str, torch.Tensor] = {}
    for x, y in batches:
        x, y = to_device(x, y, device, channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if net.aux_stages:
                x_rot, joint = D.rotate_batch(x, y)
                logits, aux = forward_in_chunks(net, x_rot, chunk_rows)
                batch = D.eval_sums(logits[::4].float(), y, [q.float() for q in aux], joint)
            else:
                batch = D.eval_sums(forward_in_chunks(net, x, chunk_rows)[0].float(), y)
        for k, v in batch.items():
            sums[k] = sums[k] + v if k in sums else v
    net.train(was_training)
    return D.finalize_metrics(all_reduce_sums(sums))
