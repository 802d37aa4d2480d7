"""The student ships: a checkpoint's backbone (heads stripped, eval mode) as an MLflow Model that
``mlflow.pytorch.load_model`` and ``mlflow models predict`` run (an MLflow 3 LoggedModel of its run, saved as pt2,
pickle-free), registered under ``tracking.register_model``, and as
standalone TorchScript / ONNX files from ``hsakd-ray export``."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from test_engine import CLASSES, quiet_reporter, tiny

from hsakd_ray.cli import main
from hsakd_ray.data import build_datasets
from hsakd_ray.engine import Runtime, load_network, run_job
from hsakd_ray.tracking.references import register_checkpoint, resolve_checkpoint
from hsakd_ray.train.student_model import log_student_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint of a network with heads after every stage (one epoch of run_job on synthetic images)."""
    run_dir = tmp_path_factory.mktemp("job")
    cfg = tiny("teacher.aux_stages=all")
    run_job(cfg, "teacher", Runtime(report=quiet_reporter(run_dir, cfg)))
    return run_dir / "latest"  # the kept checkpoint of a run without a validation split


def reference(checkpoint: Path) -> tuple[torch.Tensor, np.ndarray]:
    """Real eval images and the logits the checkpoint's own backbone gives them."""
    images = torch.stack([build_datasets(tiny().data).eval[i][0] for i in range(8)])
    net = load_network(checkpoint, role="checkpoint")
    assert len(net.heads) == 3  # the checkpoint really carries heads, which the shipped model must not
    with torch.no_grad():
        return images, net.eval().backbone(images).numpy()


@pytest.fixture(scope="module")
def logged(checkpoint, tmp_path_factory) -> tuple[str, str, str]:
    """A RUNNING run holding a test summary (as fit.py logs it before the model), then the student's LoggedModel."""
    store = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("deploy", (store / "artifacts").as_uri())).info.run_id
    client.log_metric(run_id, "test/top1_last", 91.5, step=0)
    client.log_metric(run_id, "test/top1", 90.0, step=1)  # a per-epoch value: not the model's
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("mlflow").addHandler(handler)
    try:
        model_uri = log_student_model(client, run_id, checkpoint)
    finally:
        logging.getLogger("mlflow").removeHandler(handler)
    warned.extend(r.getMessage() for r in records if r.levelno >= logging.WARNING)
    return uri, run_id, model_uri


warned: list[str] = []  # what MLflow warned while logging the student (the pickle format warns)


def with_store(uri: str):
    return mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": uri})


def test_student_is_a_logged_model_of_its_run_with_the_test_summary_linked(logged):
    import mlflow

    uri, run_id, model_uri = logged
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"  # logging inside the run leaves its status to its owner
    with with_store(uri):
        (model,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert model_uri == f"models:/{model.model_id}"
    assert model.name == "student" and model.source_run_id == run_id
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]  # the run's "Logged models"
    assert {m.key: m.value for m in model.metrics} == {"test/top1_last": 91.5}


def test_student_is_saved_as_pt2_without_a_warning(logged):
    from mlflow.models import Model

    uri, _, model_uri = logged
    with with_store(uri):
        info = Model.load(model_uri)
    assert info.flavors["pytorch"]["model_data"] == "data" and "python_function" in info.flavors
    assert not warned, warned


@pytest.mark.parametrize("via", ["model_id", "run"])
def test_logged_model_loads_without_heads_and_matches(logged, checkpoint, via):
    import mlflow.pytorch
    from mlflow.models import Model

    uri, run_id, model_uri = logged
    ref = model_uri if via == "model_id" else f"runs:/{run_id}/student"
    # pt2 is pickle-free: it loads where MLflow refuses to run model code (pickle)
    with with_store(uri), mock.patch.dict(os.environ, {"MLFLOW_ALLOW_MODEL_CODE_EXECUTION": "false"}):
        model = mlflow.pytorch.load_model(ref)
        info = Model.load(ref)
    assert not any("heads" in name for name, _ in model.named_parameters())
    images, expected = reference(checkpoint)
    with torch.no_grad():
        np.testing.assert_allclose(model(images).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 16, 16)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, CLASSES)
    assert info.saved_input_example_info is not None
    assert info.metadata["arch"] == "resnet8"


def test_mlflow_models_predict_runs_the_student(logged, checkpoint, tmp_path):
    uri, run_id, model_uri = logged
    images, expected = reference(checkpoint)
    (tmp_path / "in.json").write_text(json.dumps({"inputs": images.numpy().tolist()}))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "mlflow"), "models", "predict", "-m", model_uri, "-i",
         str(tmp_path / "in.json"), "-t", "json", "-o", str(tmp_path / "out.json"), "--env-manager", "local"],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    predictions = np.array(json.loads((tmp_path / "out.json").read_text())["predictions"])
    np.testing.assert_allclose(predictions, expected, rtol=1e-4, atol=1e-4)


def test_registered_version_is_the_logged_model_and_still_resolves_to_the_checkpoint(logged, checkpoint, tmp_path):
    import mlflow.pytorch

    uri, run_id, model_uri = logged
    client = MlflowClient(uri)
    client.log_artifacts(run_id, str(checkpoint), artifact_path="checkpoint")
    ref = register_checkpoint(run_id, "student", uri)
    assert ref == "models:/student/1"
    version = client.get_model_version("student", "1")
    assert version.source == model_uri and version.run_id == run_id
    (tmp_path / "dl").mkdir()
    with with_store(uri):
        model = mlflow.pytorch.load_model(ref, dst_path=str(tmp_path / "dl"))
    images, expected = reference(checkpoint)
    with torch.no_grad():
        np.testing.assert_allclose(model(images).numpy(), expected, rtol=1e-5, atol=1e-5)
    local = resolve_checkpoint(ref, uri, tmp_path / "cache")  # a config may still name it as a checkpoint
    assert (Path(local) / "meta.json").is_file()


def test_export_torchscript_loads_with_jit_and_matches(checkpoint, tmp_path, capsys):
    out = tmp_path / "student.pt"
    assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    scripted = torch.jit.load(str(out))
    images, expected = reference(checkpoint)
    with torch.no_grad():
        np.testing.assert_allclose(scripted(images).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_export_onnx_is_a_valid_graph_that_computes_the_same(checkpoint, tmp_path):
    onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
    from onnx.reference import ReferenceEvaluator

    out = tmp_path / "student.onnx"
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    graph = onnx.load(str(out))
    onnx.checker.check_model(graph)
    images, expected = reference(checkpoint)
    (logits,) = ReferenceEvaluator(graph).run(None, {"images": images.numpy()})
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_export_without_onnx_is_one_line_and_writes_nothing(checkpoint, tmp_path):
    code = ("import sys; sys.modules['onnx'] = None\n"  # as if the onnx extra were not installed
            "from hsakd_ray.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "export", str(checkpoint), "--format", "onnx", "--out",
                           str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    expected = "hsakd-ray: error: --format onnx needs the onnx package: pip install 'hsakd-ray[onnx]'"
    assert done.stderr.strip() == expected
    assert not (tmp_path / "x.onnx").exists()


def test_export_of_a_directory_that_is_no_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "torchscript", "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hsakd-ray: error: ") and "meta.json" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()
