"""One progress line per epoch of a Ray Train job, printed by the driver: ``epoch k/N  loss  metric  img/s  ETA``.

The epochs are reported in the Train controller (another process); a callback there forwards each to a queue the
driver reads while ``fit`` runs on a thread (threaded_fit.py). So the line needs no worker output on the console
(``-v`` only)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.train import UserCallback
from ray.util.queue import Queue

from .threaded_fit import fit_in_thread

SHOWN = ("epoch", "train/loss", "images_per_sec", "epoch_total_time")


class _Forwarder(UserCallback):
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        main = metrics[0]
        self.queue.put({k: v for k, v in main.items() if k in SHOWN or k.endswith("/top1")})


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def progress_line(name: str, total: int, metrics: dict, seconds_per_epoch: float) -> str:
    """``[name] epoch 3/10  loss 1.2345  val/top1 56.78  412 img/s  ETA 1m23s``."""
    epoch = int(metrics["epoch"])
    parts = [f"[{name}] epoch {epoch}/{total}", f"loss {metrics.get('train/loss', float('nan')):.4f}"]
    parts += [f"{k} {v:.2f}" for k, v in sorted(metrics.items()) if k.endswith("/top1") and "head" not in k
              and "peer" not in k]
    parts.append(f"{metrics.get('images_per_sec', 0):.0f} img/s")
    parts.append("done" if epoch >= total else f"ETA {format_duration((total - epoch) * seconds_per_epoch)}")
    return "  ".join(parts)


class JobProgress:
    """``progress = JobProgress(name, epochs)``; ``progress.callback`` to the trainer; ``progress.fit(trainer)``."""

    def __init__(self, name: str, total_epochs: int, printer: Callable[[str], None] = print) -> None:
        self.name, self.total, self.print = name, total_epochs, printer
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.callback = _Forwarder(self.queue)
        self.times: list[float] = []

    def _show(self, metrics: dict) -> None:
        if metrics.get("epoch_total_time"):
            self.times.append(float(metrics["epoch_total_time"]))
        mean = sum(self.times) / len(self.times) if self.times else 0.0
        self.print(progress_line(self.name, self.total, metrics, mean))

    def fit(self, trainer) -> Any:
        """``trainer.fit()`` (threaded_fit.py) while every epoch it reports is printed."""
        try:
            return fit_in_thread(trainer, self.queue, self._show)
        finally:
            try:
                self.queue.shutdown()
            except Exception:  # already gone with Ray
                pass
