"""PNG plots for MLflow artifacts (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_learning_curves(histories: dict[str, dict[str, list[tuple[int, float]]]], path: str | Path,
                         keys: tuple[str, ...] = ("train/loss", "top1")) -> Path:
    """One panel per metric key (a suffix match: "top1" finds test/top1 or val/top1), one line per run."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for label, series in histories.items():
            for name, points in series.items():
                if name == key or (name.endswith("/" + key) and "head" not in name and "peer" not in name):
                    steps, values = zip(*sorted(points), strict=True) if points else ((), ())
                    ax.plot(steps, values, marker=".", label=label if len(histories) > 1 else name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        ax.grid(alpha=0.3)
        if ax.lines and len(ax.lines) <= 12:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_histories(client, run_id: str, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}
