"""The epoch loops: train (loss parts accumulated on the device, no per-step host sync) and evaluate (exact counts
over the whole eval set, summed across workers when a process group is up)."""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import torch
import torch.distributed as dist

from .. import distill as D
from ..models import HSAKDNet
from .fastpath import forward_in_chunks
from .tasks import Task


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


def _prepared_ahead(task: Task, batches: Iterable, device: torch.device, channels_last: bool,
                    autocast_dtype: torch.dtype | None, threads: tuple[int, int]) -> Iterator[tuple]:
    """Yields ``(x, y, task.prepare(x, y))`` with the next batch's ``prepare`` already running on a second thread,
    so a frozen teacher's forward overlaps the student's step. ``threads``: (that thread's, this thread's) intra-op
    threads. The first ``prepare`` and the last step, which have nothing to overlap with, run here on all threads."""
    total = torch.get_num_threads()

    def init_worker() -> None:
        torch.get_num_threads()  # torch's per-thread lazy init first, so it cannot undo the next line later
        torch.set_num_threads(threads[0])

    def prepare(x: torch.Tensor, y: torch.Tensor):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return task.prepare(x, y)  # autocast state is per thread: entered here again

    pool = ThreadPoolExecutor(1, initializer=init_worker, thread_name_prefix="teacher-ahead")
    try:
        current = None
        for batch in batches:
            x, y = to_device(*batch, device, channels_last)
            if current is None:  # the first batch: nothing to overlap with yet
                current = (x, y, prepare(x, y))
                continue
            ahead = pool.submit(prepare, x, y)
            torch.set_num_threads(threads[1])
            yield current
            current = (x, y, ahead.result())
        torch.set_num_threads(total)
        if current is not None:
            yield current
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(total)


def train_epoch(task: Task, optimizer: torch.optim.Optimizer, batches: Iterable, device: torch.device,
                channels_last: bool = False, autocast_dtype: torch.dtype | None = None,
                overlap_threads: tuple[int, int] | None = None) -> dict[str, float]:
    """One pass over ``batches``; returns mean loss parts (over all workers), images seen and seconds taken.

    ``overlap_threads`` (teacher's, student's intra-op threads): run the task's gradient-free part (``prepare``)
    one batch ahead on its own thread. The step's arithmetic is unchanged; no host sync happens inside the loop.
    """
    task.train()
    totals: dict[str, torch.Tensor] = {}
    steps, images = 0, 0
    start = time.perf_counter()
    if overlap_threads is not None:
        stream = _prepared_ahead(task, batches, device, channels_last, autocast_dtype, overlap_threads)
    else:
        stream = (to_device(x, y, device, channels_last) + (None,) for x, y in batches)
    with closing(stream):  # stops the look-ahead thread if a step raises
        for x, y, prepared in stream:
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                parts = task.step(x, y) if prepared is None else task.step(x, y, prepared)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
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
