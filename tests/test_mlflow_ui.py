"""The MLflow UI opens where a person expects: experiments are tagged as model training, the printed addresses open
the runs view, and in a real browser (headless Chromium) the experiment page lists the sweep's parent run and every
trial and final run under it, the Models tab lists each final student's LoggedModel, and the parent's page shows the
results table as its description. The browser test saves its screenshot (``HSAKD_SCREENSHOT_DIR=docs/img`` refreshes
the docs' copy)."""
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


def add_final_runs(uri: str, experiment_id: str, parent: str, name: str, checkpoint: Path) -> dict[str, str]:
    """The sweep's final stage as hsakd-ray records it (tune/final_runs.py): per method a child run tagged final, with
    its test summary and its student logged as a LoggedModel from a real checkpoint; the results table as the
    parent's description. Returns {run_id: run name}."""
    from hsakd_ray.train.student_model import log_student_model
    from hsakd_ray.tune.final_runs import FinalRun, final_run_tags
    from hsakd_ray.tune.report import NOTE_TAG, finished_final_runs, method_results, results_markdown

    client = MlflowClient(uri)
    finals = {}
    for method, top1 in (("hsakd", 91.5), ("ce", 88.0)):
        run_name = f"{name}-final-{method}-seed0"
        tags = {**R.base_tags("distill", run_name), **final_run_tags(parent, FinalRun(method, 0, run_name))}
        run_id = R.start_run(client, experiment_id, run_name, tags,
                             params={"train.epochs": 4, "train.precision": "fp32"})
        for key, value in (("test/top1_last", top1), ("test/top1_best_epoch", top1 + 0.5)):
            client.log_metric(run_id, key, value, step=0)
        log_student_model(client, run_id, checkpoint)
        R.finish_run(client, run_id, "FINISHED")
        finals[run_id] = run_name
    markdown = results_markdown(f"Final runs of {name}", method_results(finished_final_runs(client, parent),
                                                                        ["hsakd", "ce"]))
    client.set_tag(parent, NOTE_TAG, markdown)
    return finals


def student_checkpoint(path: Path) -> Path:
    """A real distill checkpoint folder of a resnet8 student on 16 px digits."""
    from hsakd_ray.config import config_from_dict, dump_config
    from hsakd_ray.engine import write_checkpoint
    from hsakd_ray.models import build_model

    net = build_model("resnet8", 10, [])
    cfg = config_from_dict({"data": {"name": "digits", "image_size": 16}, "student": {"arch": "resnet8"}})
    meta = {"kind": "distill", "method": "hsakd", "arch": "resnet8", "num_classes": 10, "aux_stages": [],
            "epoch": 4, "metrics": {}, "dataset": "digits"}
    return write_checkpoint(path, model_state=net.state_dict(), meta=meta, config_yaml=dump_config(cfg))


ROW_NAMES = "[...document.querySelectorAll('[role=row][row-id] a[href*=\"/runs/\"]')].map(a => a.textContent)"
EXPAND = ("[...document.querySelectorAll('button[data-component-id$=\"runnamecellrenderer.tsx_46\"]')]"
          ".map(b => (b.click(), 1)).length")


async def browse(binary: str, lines: list[str], shot: Path, model_runs: list[str]) -> dict:
    """Open the printed addresses as a person would; what the pages show (the Models tab once every run of
    ``model_runs`` is listed as a source run, or None)."""
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
        await page.goto(runs_url.replace("/runs?", "/models?"))  # the experiment's Models tab
        listed = " && ".join(f"{text}.includes('{run_name}')" for run_name in ["Source run", *model_runs])
        seen["models_page"] = await page.wait_for(f"{listed} && {text}")
        seen["model_links"] = await page.js("[...document.querySelectorAll('a[href*=\"/models/m-\"]')]"
                                            ".map(a => a.getAttribute('href'))")
    return seen


async def open_final_run(binary: str, url: str, experiment_id: str, run_id: str) -> str:
    """The text of a final run's page once its "Logged models" section has loaded."""
    async with Browser(binary) as page:
        await page.goto(f"{url}/#/experiments/{experiment_id}/runs/{run_id}")
        return await page.wait_for("document.body.innerText.includes('Logged models (1)') && document.body.innerText")


def test_browser_shows_the_sweep_its_trials_and_final_runs_and_the_students_in_the_models_tab(mlflow_server,
                                                                                             tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium not found on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    name = f"ui-sweep-{os.getpid()}"
    experiment_id, parent, trials = make_sweep(mlflow_server, name, trials=4)
    finals = add_final_runs(mlflow_server, experiment_id, parent, name, student_checkpoint(tmp_path / "student"))
    children = {**trials, **finals}
    lines = ui_lines(mlflow_server, experiment_id, parent, "sweep")
    seen = asyncio.run(browse(binary, lines, tmp_path / "mlflow_ui.png", list(finals.values())))

    assert f"/experiments/{experiment_id}/runs" in seen["location"]  # the runs view, not the GenAI overview
    assert "overview" not in seen["location"]
    assert seen["collapsed"] == [name]  # children start folded under their parent
    assert seen["expanded_buttons"] >= 1
    assert seen["expanded"][0] == name
    assert sorted(seen["expanded"][1:]) == sorted(children.values())
    assert seen["run_page"] and name in seen["run_page"] and parent in seen["run_page"]
    assert f"Final runs of {name}" in seen["run_page"]  # the results table is the parent's description
    # the Models tab: one "student" LoggedModel per final run, each naming its source run
    models = MlflowClient(mlflow_server).search_logged_models([experiment_id])
    assert sorted(m.source_run_id for m in models) == sorted(finals)
    assert sorted(seen["model_links"]) == sorted(f"#/experiments/{experiment_id}/models/{m.model_id}" for m in models)
    assert seen["models_page"] and "student" in seen["models_page"]
    hsakd_run = next(r for r, n in finals.items() if "-hsakd-" in n)
    final_page = asyncio.run(open_final_run(binary, mlflow_server, experiment_id, hsakd_run))
    assert final_page and "student" in final_page and f"Parent run\n{name}" in final_page
    assert "overview" not in seen["run_location"]
    assert (tmp_path / "mlflow_ui.png").stat().st_size > 10_000
    if os.environ.get("HSAKD_SCREENSHOT_DIR"):
        shutil.copy(tmp_path / "mlflow_ui.png", Path(os.environ["HSAKD_SCREENSHOT_DIR"]) / "mlflow_ui.png")
