"""The MLflow UI opens where a person expects: experiments are tagged as model training, the printed addresses open
the runs view, and in a real browser (headless Chromium) the experiment page lists the sweep's parent run and every
trial run. The browser test saves its screenshot (``HSAKD_SCREENSHOT_DIR=docs/img`` refreshes the docs' copy)."""
from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from chromium import Browser, find_chromium
from mlflow.tracking import MlflowClient

from hsakd_ray.tracking import runs as R
from hsakd_ray.tracking.ui import KIND, KIND_TAG, ui_lines


def test_new_and_existing_experiments_are_tagged_model_development(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    new = R.get_experiment_id(client, "fresh")
    assert client.get_experiment(new).tags.get(KIND_TAG) == KIND
    untagged = client.create_experiment("made-elsewhere")  # e.g. by an older hsakd-ray or by hand
    assert KIND_TAG not in client.get_experiment(untagged).tags
    assert R.get_experiment_id(client, "made-elsewhere") == untagged
    assert client.get_experiment(untagged).tags.get(KIND_TAG) == KIND


def test_ui_lines_for_a_server_open_the_runs_view():
    lines = ui_lines("http://127.0.0.1:5000/", "7", "abc123", "sweep")
    assert lines == ["sweep:      http://127.0.0.1:5000/#/experiments/7/runs/abc123?workflowType=machine_learning",
                     "all runs:   http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"]


def test_ui_lines_for_a_local_store_give_the_mlflow_ui_command():
    lines = ui_lines("sqlite:////data/mlflow.db", "3", "r1")
    assert lines[0].startswith("MLflow UI:  mlflow ui --backend-store-uri sqlite:////data/mlflow.db")
    assert lines[1].endswith("http://127.0.0.1:5000/#/experiments/3/runs/r1?workflowType=machine_learning")
    assert lines[2].endswith("http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning")


def make_sweep(uri: str, name: str, trials: int) -> tuple[str, str, dict[str, str]]:
    """A sweep as hsakd-ray records it: tagged experiment, parent run, one child run per trial with epochs."""
    client = MlflowClient(uri)
    experiment_id = R.get_experiment_id(client, name)
    parent = R.start_run(client, experiment_id, name, R.base_tags("tune", name),
                         params={"search.distill.temperature": "{'uniform': [1.0, 6.0]}", "tune.scheduler": "asha"})
    children = {}
    for i in range(trials):
        trial_name = f"{name}-{i:05d}"
        run_id = client.create_run(experiment_id, run_name=trial_name, tags={
            R.PARENT_TAG: parent, R.KIND_TAG: "trial", "hsakd.trial_id": f"{i:05d}"}).info.run_id
        R.log_params(client, run_id, {"search.distill.temperature": 1.0 + i, "search.student.aux_stages": [3]})
        epochs = 2 if i % 2 else 4
        for epoch in range(1, epochs + 1):
            R.log_epoch(client, run_id, epoch, {"val/top1": 50 + 10 * epoch + i, "train/loss": 2.0 / epoch}, 0)
        if epochs < 4:
            client.set_tag(run_id, "stopped_by", "asha")
        R.finish_run(client, run_id, "FINISHED" if epochs == 4 else "KILLED")
        children[run_id] = trial_name
    client.log_metric(parent, "best_val/top1", 93.0)
    R.finish_run(client, parent, "FINISHED")
    return experiment_id, parent, children


ROW_NAMES = "[...document.querySelectorAll('[role=row][row-id] a[href*=\"/runs/\"]')].map(a => a.textContent)"
EXPAND = ("[...document.querySelectorAll('button[data-component-id$=\"runnamecellrenderer.tsx_46\"]')]"
          ".map(b => (b.click(), 1)).length")


async def browse(binary: str, lines: list[str], shot: Path) -> dict:
    """Open the printed addresses as a person would; what the pages show."""
    run_url = lines[-2].split()[-1]
    runs_url = lines[-1].split()[-1]
    seen = {}
    async with Browser(binary) as page:
        await page.goto(runs_url)
        await page.wait_for("!!document.querySelector('[role=row][row-id]')")
        seen["collapsed"] = await page.js(ROW_NAMES)
        seen["expanded_buttons"] = await page.js(EXPAND)
        await page.wait_for(f"{ROW_NAMES}.length > {len(seen['collapsed'])}", timeout=20)
        seen["expanded"] = await page.js(ROW_NAMES)
        seen["location"] = await page.js("location.href")
        await page.js("void document.querySelector('button[aria-label=Close]')?.click()")  # the assistant side panel
        await asyncio.sleep(0.5)
        await page.screenshot(shot)
        await page.goto(run_url)
        text = "document.body.innerText"
        seen["run_page"] = await page.wait_for(f"{text}.includes('best_val/top1') && {text}")
        seen["run_location"] = await page.js("location.href")
    return seen


def test_browser_shows_the_sweep_parent_and_every_trial(mlflow_server, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium not found on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    name = f"ui-sweep-{os.getpid()}"
    experiment_id, parent, children = make_sweep(mlflow_server, name, trials=4)
    lines = ui_lines(mlflow_server, experiment_id, parent, "sweep")
    seen = asyncio.run(browse(binary, lines, tmp_path / "mlflow_ui.png"))

    assert f"/experiments/{experiment_id}/runs" in seen["location"]  # the runs view, not the GenAI overview
    assert "overview" not in seen["location"]
    assert seen["collapsed"] == [name]  # children start folded under their parent
    assert seen["expanded_buttons"] >= 1
    assert seen["expanded"][0] == name
    assert sorted(seen["expanded"][1:]) == sorted(children.values())
    assert seen["run_page"] and name in seen["run_page"] and parent in seen["run_page"]
    assert "overview" not in seen["run_location"]
    assert (tmp_path / "mlflow_ui.png").stat().st_size > 10_000
    if os.environ.get("HSAKD_SCREENSHOT_DIR"):
        shutil.copy(tmp_path / "mlflow_ui.png", Path(os.environ["HSAKD_SCREENSHOT_DIR"]) / "mlflow_ui.png")
