"""Per-epoch progress lines and the local checkpoint policy (latest + best), for in-process runs."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def format_epoch(epoch: int, total: int, metrics: dict) -> str:
    """``epoch 3/10  loss 1.234  test/top1 56.78  ...  412 img/s`` (the main numbers only)."""
    shown = [f"epoch {epoch}/{total}", f"loss {metrics.get('train/loss', float('nan')):.4f}"]
    for key in sorted(metrics):
        if key.endswith("/top1"):
            shown.append(f"{key} {metrics[key]:.2f}")
    shown.append(f"lr {metrics.get('lr', 0):.4g}")
    shown.append(f"{metrics.get('images_per_sec', 0):.0f} img/s")
    return "  ".join(shown)


def score_key(metrics: dict) -> str | None:
    """The metric that ranks checkpoints: the main network's eval top-1 (``test/top1`` or ``val/top1``)."""
    return next((k for k in ("test/top1", "val/top1") if k in metrics), None)


class LocalReporter:
    """Prints each epoch and keeps ``latest`` and ``best`` checkpoint directories under ``run_dir``."""

    def __init__(self, run_dir: str | Path, total_epochs: int, checkpoint_every: int = 1,
                 printer: Callable[[str], None] = print) -> None:
        self.run_dir, self.total, self.every, self.print = Path(run_dir), total_epochs, checkpoint_every, printer
        self.best: float | None = None

    def __call__(self, epoch: int, metrics: dict, save: Callable[[str | Path], Path]) -> None:
        self.print(format_epoch(epoch, self.total, metrics))
        if epoch % self.every and epoch != self.total:
            return
        save(self.run_dir / "latest")
        key = score_key(metrics)
        if key and (self.best is None or metrics[key] > self.best):
            self.best = metrics[key]
            save(self.run_dir / "best")
