"""What a finished sweep leaves for people: a table of the top trials, a CSV of all trials, ``best_config.yaml``
and PNG plots (metric against each searched parameter, metric by placement, learning curves of all trials)."""
from __future__ import annotations

import csv
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

COMPUTE_KEYS = ("compute/cpu_seconds", "compute/gpu_seconds", "compute/wall_seconds", "compute/images_seen")


def write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


@dataclass
class TrialOutcome:
    """A trial's true final state, what every result of a sweep is built from: the epochs its MLflow run holds
    (each once, the checkpointed ones backfilled after an interrupt, so the same after ``--resume`` as without),
    the values Tune sampled for it, and whether it failed."""

    trial_id: str
    params: dict
    history: pd.DataFrame                   # one row per epoch: "epoch" and the tuning metric
    last: dict = field(default_factory=dict)  # the latest value of every metric (compute totals among them)
    error: bool = False
    run_id: str = ""

    @property
    def epochs(self) -> int:
        return int(self.history["epoch"].max()) if len(self.history) else int(self.last.get("epoch", 0) or 0)


def outcome_from_result(result, metric: str, run_id: str = "") -> TrialOutcome:
    """A trial's outcome from what Tune recorded alone (a trial with no MLflow run)."""
    history = result.metrics_dataframe
    if history is None or metric not in history or "epoch" not in history:
        history = pd.DataFrame({"epoch": [], metric: []})
    history = history.dropna(subset=[metric])[["epoch", metric]]
    last = result.metrics or {}
    return TrialOutcome(last.get("trial_id") or Path(result.path).name, (result.config or {}).get("params", {}),
                        history.reset_index(drop=True), dict(last), bool(result.error), run_id)


def trial_rows(outcomes: list[TrialOutcome], metric: str, mode: str) -> list[dict]:
    """One row per trial, best first: id, status, epochs, last and best metric, sampled values, compute used
    (totals at its last epoch: cpu_seconds, gpu_seconds, wall_seconds, images_seen), MLflow run id."""
    rows = []
    for o in outcomes:
        values = o.history[metric].tolist() if metric in o.history else []
        best = (max(values) if mode == "max" else min(values)) if values else math.nan
        rows.append({"trial_id": o.trial_id, "status": "ERROR" if o.error else "OK", "epochs": o.epochs,
                     f"last_{metric}": values[-1] if values else math.nan, f"best_{metric}": best,
                     **{k: _cell(v) for k, v in o.params.items()},
                     **{k.split("/", 1)[1]: float(o.last.get(k, math.nan)) for k in COMPUTE_KEYS},
                     "mlflow_run_id": o.run_id})
    rows.sort(key=lambda r: rank_key(r, metric, mode))
    return rows


def can_win(row: dict, metric: str) -> bool:
    """A trial that failed (a diverged loss, a data error) or never reported ``metric`` is never the best."""
    return row["status"] == "OK" and not math.isnan(row[f"best_{metric}"])


def rank_key(row: dict, metric: str, mode: str) -> tuple[int, float]:
    """Best first by ``mode``; the trials that cannot win after all the others, in their order."""
    if not can_win(row, metric):
        return 1, 0.0
    return 0, -row[f"best_{metric}"] if mode == "max" else row[f"best_{metric}"]


def _cell(value):
    return str(value) if isinstance(value, (list, tuple)) else value


def write_csv(rows: list[dict], path: Path) -> Path:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with tempfile.NamedTemporaryFile("w", newline="", delete=False, dir=path.parent, suffix=".tmp") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(f.name, path)
    return path


def format_table(rows: list[dict], metric: str, searched: list[str], top_k: int) -> str:
    cols = ["trial_id", f"best_{metric}", "epochs", *searched]
    shown = [[_fmt(r.get(c)) for c in cols] for r in rows[:top_k]]
    widths = [max(len(c), *(len(s[i]) for s in shown)) if shown else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(s) for s in shown)])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot_metric_vs_params(rows: list[dict], metric: str, searched: list[str], path: Path) -> Path:
    """One scatter per searched key (categorical keys on an index axis), the trials' best metric on y."""
    key = f"best_{metric}"
    fig, axes = plt.subplots(1, len(searched), figsize=(4 * len(searched), 3.4), squeeze=False)
    for ax, param in zip(axes[0], searched):
        xs, ys = [r.get(param) for r in rows], [r[key] for r in rows]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
            ax.scatter(xs, ys)
        else:
            labels = sorted({str(x) for x in xs})
            ax.scatter([labels.index(str(x)) for x in xs], ys)
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax.set_xlabel(param)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_metric_by_placement(rows: list[dict], metric: str, path: Path, key: str = "student.aux_stages") -> Path:
    """Best metric of each trial grouped by head placement (box per placement, dots for trials)."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        if not math.isnan(r[f"best_{metric}"]):
            groups.setdefault(str(r.get(key, "base")), []).append(r[f"best_{metric}"])
    labels = sorted(groups)
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(labels)), 3.4))
    if labels:
        ax.boxplot([groups[k] for k in labels])
        for i, k in enumerate(labels, start=1):
            ax.scatter([i] * len(groups[k]), groups[k], s=12, zorder=3)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.set_xlabel(f"placement ({key})")
    ax.set_ylabel(f"best {metric}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_trial_curves(outcomes: list[TrialOutcome], metric: str, path: Path, total_epochs: int | None = None) -> Path:
    """The tuning metric per epoch for every trial; a trial stopped before ``total_epochs`` ends in a cross."""
    fig = trial_curves_figure(outcomes, metric, total_epochs)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def trial_curves_figure(outcomes: list[TrialOutcome], metric: str, total_epochs: int | None = None):
    fig, ax = plt.subplots(figsize=(6, 3.6))
    stopped_label = True
    for o in outcomes:
        df = o.history
        if metric in df and len(df):
            (line,) = ax.plot(df["epoch"], df[metric], marker=".", alpha=0.8, label=o.trial_id)
            if total_epochs and int(df["epoch"].iloc[-1]) < total_epochs:
                ax.scatter(df["epoch"].iloc[-1:], df[metric].iloc[-1:], marker="X", s=70, color=line.get_color(),
                           edgecolors="black", zorder=3, label="stopped early" if stopped_label else None)
                stopped_label = False
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if len(ax.lines) <= 12 and ax.lines:
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def compute_axis(rows: list[dict]) -> str:
    """The cost to plot against: GPU-seconds when any trial held a GPU, else CPU-seconds."""
    gpu = [r.get("gpu_seconds", math.nan) for r in rows]
    return "gpu_seconds" if any(v > 0 for v in gpu if not math.isnan(v)) else "cpu_seconds"


def pareto_front(points: list[tuple[float, float, str]], mode: str) -> list[tuple[float, float, str]]:
    """The points no other point beats on both cost (lower) and metric (higher for ``max``), cheapest first."""
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    front: list[tuple[float, float, str]] = []
    for point in sorted(points, key=lambda p: (p[0], -p[1] if mode == "max" else p[1])):
        if not front or better(point[1], front[-1][1]):
            front.append(point)
    return front


def plot_metric_vs_compute(rows: list[dict], metric: str, mode: str, path: Path) -> Path:
    """Each trial's best metric against the compute it used, the Pareto front joined and labelled."""
    axis = compute_axis(rows)
    points = [(r[axis], r[f"best_{metric}"], str(r["trial_id"])) for r in rows
              if not math.isnan(r.get(axis, math.nan)) and not math.isnan(r[f"best_{metric}"])]
    front = pareto_front(points, mode)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="0.6", label="trial")
        ax.plot([p[0] for p in front], [p[1] for p in front], "-o", color="tab:red", label="Pareto front")
        for x, y, name in front:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.legend(fontsize=7)
    ax.set_xlabel(axis.replace("_", "-") + " (all workers)")
    ax.set_ylabel(f"best {metric}")
    ax.set_title(f"{metric} against compute")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def dump_yaml(raw: dict) -> str:
    return yaml.safe_dump(raw, sort_keys=False)
