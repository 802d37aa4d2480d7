"""Compute in view: the running totals each worker reports (compute/*), the trials table that carries them, the plot
of the ranking metric against compute with its Pareto front, and learning curves that mark early-stopped trials."""
from __future__ import annotations

import csv
import json
import math
import time

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from ray.tune import Result

from hsakd_ray.train.compute import CPU, GPU, IMAGES, WALL, ComputeMeter
from hsakd_ray.tune import results as out


def burn(seconds: float) -> None:
    end = time.process_time() + seconds
    x = torch.ones(64, 64)
    while time.process_time() < end:
        x = (x @ x).clamp_(max=1.0)


def test_meter_counts_cpu_wall_gpu_and_images_and_continues_after_a_restart(tmp_path):
    meter = ComputeMeter(gpus_per_worker=0.5, world_size=2, device=torch.device("cpu"))
    burn(0.3)
    first = meter.totals({"images_per_sec": 100.0, "epoch_time": 2.0})
    second = meter.totals({"images_per_sec": 50.0, "epoch_time": 3.0})
    assert first[IMAGES] == 200 and second[IMAGES] == 350
    assert 0.25 <= first[CPU] <= second[CPU]
    assert first[WALL] > 0 and second[GPU] == pytest.approx(1.0 * second[WALL])  # 2 workers x 0.5 GPU
    (tmp_path / "reported_epochs.json").write_text(json.dumps([{"epoch": 2, **second}]))
    resumed = ComputeMeter(gpus_per_worker=0.0, world_size=1, device=torch.device("cpu"))
    resumed.resume_from(tmp_path)
    after = resumed.totals({"images_per_sec": 10.0, "epoch_time": 1.0})
    assert after[IMAGES] == 360 and after[CPU] >= second[CPU] and after[WALL] > second[WALL]
    assert after[GPU] == pytest.approx(second[GPU])


def test_pareto_front_keeps_only_points_no_cheaper_point_beats():
    points = [(10, 80, "a"), (5, 70, "b"), (20, 79, "c"), (30, 90, "d"), (5, 60, "e"), (40, 90, "f")]
    assert [p[2] for p in out.pareto_front(points, "max")] == ["b", "a", "d"]
    assert [p[2] for p in out.pareto_front([(1, 0.5, "x"), (2, 0.3, "y"), (3, 0.4, "z")], "min")] == ["x", "y"]


def result(tmp_path, trial_id: str, epochs: int, top1: list[float], cpu: float) -> Result:
    history = pd.DataFrame({"epoch": range(1, epochs + 1), "val/top1": top1})
    last = {"trial_id": trial_id, "epoch": epochs, "val/top1": top1[-1], "compute/cpu_seconds": cpu,
            "compute/gpu_seconds": 0.0, "compute/wall_seconds": cpu / 2, "compute/images_seen": 100.0 * epochs}
    return Result(metrics=last, checkpoint=None, error=None, path=str(tmp_path / trial_id),
                  metrics_dataframe=history)


@pytest.fixture()
def grid(tmp_path) -> list[Result]:
    return [result(tmp_path, "t1", 4, [50, 60, 70, 80], 40.0), result(tmp_path, "t2", 2, [40, 45], 20.0),
            result(tmp_path, "t3", 4, [55, 65, 75, 78], 45.0), result(tmp_path, "t4", 1, [30], 10.0)]


def test_trials_csv_carries_compute(grid, tmp_path):
    rows = out.trial_rows([out.outcome_from_result(r, "val/top1") for r in grid], "val/top1", "max")
    out.write_csv(rows, tmp_path / "trials.csv")
    with open(tmp_path / "trials.csv") as f:
        table = {r["trial_id"]: r for r in csv.DictReader(f)}
    assert float(table["t1"]["cpu_seconds"]) == 40.0 and float(table["t2"]["images_seen"]) == 200.0
    assert float(table["t3"]["wall_seconds"]) == 22.5 and float(table["t4"]["gpu_seconds"]) == 0.0
    assert out.compute_axis(rows) == "cpu_seconds"
    png = out.plot_metric_vs_compute(rows, "val/top1", "max", tmp_path / "metric_vs_compute.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_learning_curves_mark_trials_stopped_early_on_whole_epochs(grid):
    fig = out.trial_curves_figure([out.outcome_from_result(r, "val/top1") for r in grid], "val/top1", total_epochs=4)
    ax = fig.axes[0]
    crosses = [tuple(map(float, c.get_offsets()[0])) for c in ax.collections]
    assert sorted(crosses) == [(1.0, 30.0), (2.0, 45.0)]  # t4 and t2 stopped; t1 and t3 ran all 4 epochs
    assert "stopped early" in [t.get_text() for t in ax.get_legend().get_texts()]
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(math.isclose(t, round(t)) for t in ticks)
    plt.close(fig)
