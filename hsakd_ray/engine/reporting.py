"""Per-epoch progress lines and the local checkpoint policy (``latest``, plus ``best`` when a validation metric
chooses the kept checkpoint; see selection.py), for in-process runs."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .selection import top1_summary


def format_epoch(epoch: int, total: int, metrics: dict) -> str:
    """``epoch 3/10  loss 1.234  test/top1 56.78  ...  412 img/s`` (the main numbers only)."""
    shown = [f"epoch {epoch}/{total}", f"loss {metrics.get('train/loss', float('nan')):.4f}"]
    for key in sorted(metrics):
        if key.endswith("/top1"):
            shown.append(f"{key} {metrics[key]:.2f}")
    shown.append(f"lr {metrics.get('lr', 0):.4g}")
    shown.append(f"{metrics.get('images_per_sec', 0):.0f} img/s")
    return "  ".join(shown)


class LocalReporter:
    """Prints each epoch, keeps the ``latest`` checkpoint directory under ``run_dir`` and, when ``keep_by`` names a
    (validation) metric, the ``best`` one by it; records the main network's ``{split}/top1`` per epoch."""

    def __init__(self, run_dir: str | Path, total_epochs: int, checkpoint_every: int = 1,
                 printer: Callable[[str], None] = print, keep_by: str | None = None, split: str = "test") -> None:
        self.run_dir, self.total, self.every, self.print = Path(run_dir), total_epochs, checkpoint_every, printer
        self.keep_by, self.split = keep_by, split
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.history: dict[int, float] = {}

    def __call__(self, epoch: int, metrics: dict, save: Callable[[str | Path], Path]) -> None:
        self.print(format_epoch(epoch, self.total, metrics))
        if f"{self.split}/top1" in metrics:
            self.history[epoch] = float(metrics[f"{self.split}/top1"])
        if epoch % self.every and epoch != self.total:
            return
        save(self.run_dir / "latest")
        if self.keep_by is None:
            self.best_epoch = epoch
            return
        value = metrics[self.keep_by]
        if self.best is None or value > self.best:
            self.best, self.best_epoch = value, epoch
            save(self.run_dir / "best")

    @property
    def kept(self) -> Path:
        """The checkpoint the job produces: ``best`` by ``keep_by``, else ``latest`` (the last epoch)."""
        return self.run_dir / ("best" if self.keep_by else "latest")

    def summary(self) -> dict[str, float]:
        return top1_summary(self.history, self.split)
