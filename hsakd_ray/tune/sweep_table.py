"""The sweep's console: a compact live table (trial, status, the sampled values that differ between trials, epoch,
ranking metric, best so far) that fits 120 columns, reprinted as trials progress, plus one line per finished,
stopped or failed trial. Replaces Tune's own 230-column table (``-v`` brings that back)."""
from __future__ import annotations

import math
import time
from collections.abc import Callable

from ray.tune import Callback

from .space import SearchSpace

WIDTH = 120


def _fmt(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return str(value)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "~"


class SweepTable(Callback):
    def __init__(self, space: SearchSpace, metric: str, mode: str, every: float = 20.0,
                 printer: Callable[[str], None] = print, width: int = WIDTH,
                 history: Callable[[str, str], list[tuple[int, float]]] | None = None) -> None:
        self.space, self.metric, self.mode = space, metric, mode
        self.history = history  # (trial id, metric) -> its (epoch, value) in MLflow, for what this driver missed
        self.total, self.samples = space.base.train.epochs, space.tune.num_samples
        self.every, self.print, self.width = every, printer, width
        self.trials: dict[str, dict] = {}  # trial id -> {params, status, epoch, last, best}
        self._printed = 0.0

    # ---------------------------------------------------------------- Tune hooks (in the Tune driver)
    def _entry(self, trial) -> dict:
        return self.trials.setdefault(trial.trial_id, {"params": dict(trial.config.get("params", {})),
                                                       "status": "PENDING", "epoch": 0, "last": math.nan,
                                                       "best": math.nan})

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._entry(trial)["status"] = "RUNNING"

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        entry = self._entry(trial)
        entry["status"] = "RUNNING"
        if "epoch" in result:
            entry["epoch"] = int(result["epoch"])
        if self.metric in result:
            value = float(result[self.metric])
            entry["last"] = value
            entry["best"] = value if math.isnan(entry["best"]) else self._better(entry["best"], value)
        if time.monotonic() - self._printed >= self.every:
            self.show()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        entry = self._entry(trial)
        history = getattr(self, "history", None)  # None in a table pickled by an older version (Tuner.restore)
        recorded = history(trial.trial_id, self.metric) if history and entry["epoch"] < self.total else []
        if recorded and recorded[-1][0] > entry["epoch"]:  # epochs reported before a --resume, or checkpointed
            values = [v for _, v in recorded]  # during the interrupt: the trial's true state is its MLflow run's
            entry.update(epoch=int(recorded[-1][0]), last=values[-1],
                         best=max(values) if self.mode == "max" else min(values))
        entry["status"] = "DONE" if entry["epoch"] >= self.total else "STOPPED"
        what = "finished" if entry["status"] == "DONE" else f"stopped early by {self.space.tune.scheduler.type}"
        self.print(f"trial {trial.trial_id} {what} at epoch {entry['epoch']}/{self.total}: "
                   f"{self.metric} {_fmt(entry['last'])} (best {_fmt(entry['best'])})")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._entry(trial)["status"] = "ERROR"
        message = str(getattr(trial, "error_message", None) or "see the trial's error file").strip()
        self.print(f"error: trial {trial.trial_id} failed: {message.splitlines()[-1]}")

    def on_experiment_end(self, trials, **info) -> None:
        self.show()

    # ---------------------------------------------------------------- the table
    def _better(self, a: float, b: float) -> float:
        return max(a, b) if self.mode == "max" else min(a, b)

    def differing(self) -> list[str]:
        """Searched keys whose sampled values differ between the trials seen so far."""
        keys = list(dict.fromkeys(k for t in self.trials.values() for k in t["params"]))
        return [k for k in keys if len({_fmt(t["params"].get(k)) for t in self.trials.values()}) > 1]

    def render(self) -> list[str]:
        best = [(t["best"], tid) for tid, t in self.trials.items() if not math.isnan(t["best"])]
        overall = (max(best) if self.mode == "max" else min(best)) if best else None
        done = sum(t["status"] in ("DONE", "STOPPED", "ERROR") for t in self.trials.values())
        running = sum(t["status"] == "RUNNING" for t in self.trials.values())
        head = f"trials: {done}/{self.samples} done, {running} running"
        if overall:
            head += f" | best {self.metric} {_fmt(overall[0])} (trial {overall[1]})"
        keys = self.differing()
        fixed = [("trial", [tid for tid in self.trials]),
                 ("status", [t["status"] for t in self.trials.values()]),
                 ("epoch", [f"{t['epoch']}/{self.total}" for t in self.trials.values()]),
                 (self.metric, [_fmt(t["last"]) for t in self.trials.values()]),
                 ("best", [_fmt(t["best"]) for t in self.trials.values()])]
        params = [(k.rsplit(".", 1)[-1], [_fmt(t["params"].get(k, "")) for t in self.trials.values()]) for k in keys]
        columns = fixed[:2] + params + fixed[2:]
        widths = [max(len(name), *(len(v) for v in values)) if values else len(name) for name, values in columns]
        # fit the width: clip the sampled-value columns evenly, then drop the last ones if still too wide
        room = self.width - sum(widths) - 2 * (len(widths) - 1)
        first, count = 2, len(params)
        while room < 0 and count and max(widths[first:first + count]) > 6:
            widest = max(range(first, first + count), key=lambda i: widths[i])
            widths[widest] -= 1
            room += 1
        while room < 0 and count:
            room += widths[first + count - 1] + 2
            del columns[first + count - 1], widths[first + count - 1]
            count -= 1
        line = lambda cells: "  ".join(_clip(c, w).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        rows = [line([name for name, _ in columns]), line(["-" * w for w in widths])]
        rows += [line([values[i] for _, values in columns]) for i in range(len(self.trials))]
        return [head[: self.width], *rows]

    def show(self) -> None:
        self._printed = time.monotonic()
        if self.trials:
            self.print("\n".join(self.render()))
