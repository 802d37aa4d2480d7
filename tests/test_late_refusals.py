"""Refusals that once came late (after the teacher trained, or with a traceback) or never: each is one line and exit
code 2 before anything trains or Ray starts (issue 27, case 10)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from hsakd_ray.cli import main
from hsakd_ray.config import Config, dump_config
from hsakd_ray.engine.checkpoint import write_checkpoint
from hsakd_ray.models import build_model

QUICKSTART = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("hsakd-ray: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("section, values, fragment", [
    ("scheduler", {"type": "asha", "grace_period": 2, "reduction_factor": 1},
     "tune.scheduler.reduction_factor must be a number > 1, got 1"),
    ("resources", {"num_workers": 1.5, "cpus_per_worker": 0.95}, "tune.resources.num_workers must be an integer"),
    ("time_budget_s", -5, "tune.time_budget_s must be a number > 0 or null, got -5"),
    ("max_concurrent_trials", 0, "tune.max_concurrent_trials must be an integer >= 1"),
    ("scheduler", {"type": "asha", "grace_period": 2, "max_t": 2.5}, "tune.scheduler.max_t must be an integer"),
])
def test_tune_numbers_ray_would_refuse_late_are_one_line_before_ray(tmp_path, capsys, section, values, fragment):
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["tune"][section] = values
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    ray_loaded = "ray" in sys.modules
    assert main(["tune", str(space), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    assert fragment in one_line_error(capsys)
    assert ray_loaded or "ray" not in sys.modules  # refused before Ray was even imported
    assert not (tmp_path / "mlflow.db").exists()


@pytest.fixture()
def teacher_checkpoint(tmp_path) -> Path:
    cfg = Config()
    cfg.data.name, cfg.data.image_size = "digits", 16
    cfg.teacher.arch = cfg.student.arch = "resnet8"
    net = build_model("resnet8", 10, "all")
    meta = {"kind": "teacher", "method": None, "arch": "resnet8", "num_classes": 10, "aux_stages": [1, 2, 3],
            "epoch": 1, "metrics": {}, "dataset": "digits"}
    return write_checkpoint(tmp_path / "teacher", model_state=net.state_dict(), meta=meta,
                            config_yaml=dump_config(cfg))


@pytest.mark.parametrize("override", ["teacher.arch=wrn_16_2", "student.arch=resnet14", "teacher.aux_stages=[3]"])
def test_evaluate_refuses_a_network_the_checkpoint_does_not_hold(teacher_checkpoint, capsys, override):
    assert main(["evaluate", str(teacher_checkpoint), "--set", override]) == 2
    key = override.split("=")[0]
    assert f"--set {key}=" in (err := one_line_error(capsys)) and "the checkpoint" in err and str(teacher_checkpoint) \
        in err


def test_import_of_a_file_cut_mid_tensor_names_the_file(tmp_path, capsys):
    whole = tmp_path / "whole.pth"
    torch.save({"net": {"backbone.conv1.weight": torch.zeros(64, 64, 3, 3)}}, whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: int(len(data) * 0.3)])  # inside the tensor's bytes: torch.load raises OSError here
    assert main(["import", str(cut), "--arch", "resnet8", "--out", str(tmp_path / "out")]) == 2
    err = one_line_error(capsys)
    assert str(cut) in err and "truncated or corrupt" in err
    assert not (tmp_path / "out").exists()
