"""The final stage's results: one row per method (the tuned one, then the baselines) with the mean ± std over seeds
of the test top-1 of the last epoch and of the best test epoch (the figure the reference publishes), the gain over
``ce``, the precision and epochs used and, for a shipped space, the published figure. Read back from the final runs
themselves (MLflow children of the sweep's parent tagged ``hsakd.final``), so a resumed stage reports every run."""
from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from ..tracking.runs import PARENT_TAG

FINAL_TAG, FINAL_METHOD_TAG, FINAL_SEED_TAG = "hsakd.final", "hsakd.final_method", "hsakd.final_seed"
LAST, BEST = "test/top1_last", "test/top1_best_epoch"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI


@dataclass
class MethodResult:
    method: str
    seeds: list[int] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    precision: set[str] = field(default_factory=set)
    epochs: set[int] = field(default_factory=set)


def finished_final_runs(client: MlflowClient, parent_run_id: str) -> list[Run]:
    """The parent's FINISHED final runs (its children tagged ``hsakd.final = true``)."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment_id], max_results=1000, filter_string=(
        f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{FINAL_TAG}` = 'true' and attributes.status = 'FINISHED'"))


def method_results(runs: Sequence[Run], order: Sequence[str]) -> list[MethodResult]:
    """The runs grouped by method (in ``order``, then any other), seeds ascending."""
    by_method: dict[str, MethodResult] = {}
    for run in sorted(runs, key=lambda r: int(r.data.tags.get(FINAL_SEED_TAG, 0))):
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        if LAST not in metrics or BEST not in metrics:
            continue
        result = by_method.setdefault(tags[FINAL_METHOD_TAG], MethodResult(tags[FINAL_METHOD_TAG]))
        result.seeds.append(int(tags.get(FINAL_SEED_TAG, 0)))
        result.last.append(metrics[LAST])
        result.best.append(metrics[BEST])
        result.precision.add(tags.get("hsakd.precision") or params.get("train.precision", "?"))
        if "train.epochs" in params:
            result.epochs.add(int(params["train.epochs"]))
    rank = {m: i for i, m in enumerate(order)}
    return sorted(by_method.values(), key=lambda r: (rank.get(r.method, len(rank)), r.method))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single run)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def _gain(result: MethodResult, ce: MethodResult | None) -> str:
    if ce is None or result is ce:
        return "—"
    last = mean_std(result.last)[0] - mean_std(ce.last)[0]
    best = mean_std(result.best)[0] - mean_std(ce.best)[0]
    return f"{last:+.2f} / {best:+.2f}"


def results_table(results: Sequence[MethodResult],
                  published: Callable[[str], tuple[float, str] | None] = lambda method: None) -> str:
    """The markdown table; ``published(method)`` gives the reference's figure and its label, or None."""
    ce = next((r for r in results if r.method == "ce"), None)
    lines = ["| method | seeds | test/top1_last | test/top1_best_epoch | gain over ce (last / best) | precision | "
             "epochs | published |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        figure = published(r.method)
        lines.append(f"| {r.method} | {len(r.seeds)} ({', '.join(map(str, r.seeds))}) | {_cell(r.last)} | "
                     f"{_cell(r.best)} | {_gain(r, ce)} | {', '.join(sorted(r.precision))} | "
                     f"{', '.join(map(str, sorted(r.epochs)))} | "
                     f"{f'{figure[0]:.2f} ({figure[1]})' if figure else '—'} |")
    return "\n".join(lines)


def results_markdown(title: str, results: Sequence[MethodResult],
                     published: Callable[[str], tuple[float, str] | None] = lambda method: None) -> str:
    """``results.md`` and the parent run's description: a title, what the figures are, the table."""
    return (f"## {title}\n\n"
            "Top-1 (%) on the test set, mean ± sample std over seeds, of each method's final runs (the whole training "
            "set, the best config's values for the tuned method, the base config for the baselines). "
            "`test/top1_best_epoch` is the best test epoch, which the reference publishes (averaged over runs); "
            "`test/top1_last` is the last epoch, which nothing chose.\n\n" + results_table(results, published) + "\n")
