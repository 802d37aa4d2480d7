"""The command line: the models table, teacher -> distill -> evaluate in-process, and one-line errors (exit 2)."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hsakd_ray.cli import main
from hsakd_ray.config import DataConfig
from hsakd_ray.data import build_datasets
from hsakd_ray.engine import read_meta
from hsakd_ray.models import list_architectures, num_stages

torch.set_num_threads(1)  # tiny convs: a second thread only adds synchronisation on a shared 2-core machine

REPO = Path(__file__).resolve().parents[1]

# A few-shot slice of digits keeps each epoch to ~140 images; the test split stays whole (359 images).
DIGITS_YAML = """\
data: {name: digits, image_size: 16, few_shot_ratio: 0.1}
teacher: {arch: resnet8, aux_stages: all}
student: {arch: resnet8, aux_stages: [2, 3]}
distill: {method: hsakd}
optim: {lr: 5e-2, schedule: cosine, milestones: []}
train: {epochs: 1, batch_size: 32, device: cpu, output_dir: OUTPUT}
"""


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("hsakd-ray: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture()
def digits_config(tmp_path) -> Path:
    path = tmp_path / "digits.yaml"
    path.write_text(DIGITS_YAML.replace("OUTPUT", str(tmp_path / "outputs")))
    return path


def test_models_table_lists_every_arch_with_counts(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["arch", "stages", "backbone", "params", "with", "all", "heads"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert sorted(rows) == list_architectures()
    for arch, (stages, backbone, total) in rows.items():
        assert int(stages) == num_stages(arch)
        assert 0 < int(backbone.replace(",", "")) < int(total.replace(",", ""))
    assert rows["resnet8"][1:] == ["83,892", "365,860"]  # docs/method.md, "Backbone sizes", 100 classes
    assert rows["wrn_40_2"][1] == "2,255,156"


def test_teacher_then_distill_then_evaluate_on_digits(digits_config, tmp_path, capsys):
    out = tmp_path / "outputs"
    assert main(["teacher", str(digits_config), "--local", "--set", "tracking.run_name=t"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1" in printed and f"done: {out / 't' / 'latest'} (last epoch)" in printed
    assert "test/top1_last" in printed and "test/top1_best_epoch" in printed
    teacher = out / "t" / "latest"
    assert (teacher / "model.pt").is_file()

    assert main(["distill", str(digits_config), "--local", "--set", "tracking.run_name=s",
                 "--set", f"teacher.checkpoint={teacher}"]) == 0
    capsys.readouterr()
    student = out / "s" / "latest"

    assert main(["evaluate", str(student)]) == 0
    printed = capsys.readouterr().out
    assert "(resnet8, test split of digits, 359 images, precision " in printed
    top1 = float(re.search(r"test/top1\s+([\d.]+)", printed).group(1))
    assert top1 == pytest.approx(read_meta(student)["metrics"]["test/top1"], abs=0.005)  # what training measured
    assert re.search(r"test/head_1_class_acc\s+[\d.]+", printed)  # the student's two heads are evaluated

    # --set changes the stored config for this evaluation: a 20 % validation split carved from the training set
    assert main(["evaluate", str(student), "--set", "data.val_fraction=0.2"]) == 0
    printed = capsys.readouterr().out
    held_out = len(build_datasets(DataConfig(name="digits", image_size=16, val_fraction=0.2)).eval)
    assert f"(resnet8, val split of digits, {held_out} images, precision " in printed and 280 < held_out < 300
    assert re.search(r"val/top1\s+[\d.]+", printed) and "test/top1" not in printed
    assert main(["evaluate", str(student), "--set", "data.val_fraction=0.9"]) == 2
    assert "data.val_fraction must be in [0.0, 0.5]" in one_line_error(capsys)


def test_distill_from_a_teacher_of_another_arch_is_one_line(digits_config, tmp_path, capsys):
    teacher = tmp_path / "not_resnet14"
    teacher.mkdir()
    (teacher / "meta.json").write_text('{"arch": "resnet8", "num_classes": 10, "aux_stages": [1, 2, 3]}')
    code = main(["distill", str(digits_config), "--local", "--set", "teacher.arch=resnet14",
                 "--set", f"teacher.checkpoint={teacher}"])
    assert code == 2
    assert "holds 'resnet8', but teacher.arch is 'resnet14'" in one_line_error(capsys)


@pytest.mark.parametrize("overrides,fragment", [
    (["optim.learning_rate=0.1"], "unknown config key 'optim.learning_rate'; allowed: lr,"),
    (["train.epochs=zero"], "train.epochs must be an integer"),
    (["optim.lr=0"], "optim.lr must be in (0.0, inf]"),
    (["student.aux_stages=[4]"], "student.aux_stages [4] not in 1..3"),
    (["optim.lr"], "must look like section.key=value"),
])
def test_bad_config_is_one_line_and_exit_2(digits_config, overrides, fragment, capsys):
    argv = ["teacher", str(digits_config), "--local"]
    for text in overrides:
        argv += ["--set", text]
    assert main(argv) == 2
    assert fragment in one_line_error(capsys)


def test_missing_config_file_is_one_line(tmp_path, capsys):
    assert main(["distill", str(tmp_path / "nope.yaml"), "--local"]) == 2
    assert "not found" in one_line_error(capsys)


def test_evaluate_of_a_missing_directory_is_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "no_such_run" / "best")]) == 2
    assert "is not an hsakd-ray checkpoint directory" in one_line_error(capsys)


def test_console_script_exits_2_without_traceback_on_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 3\n  bach_size: 64\n")
    result = subprocess.run([sys.executable, "-m", "hsakd_ray.cli", "teacher", str(bad), "--local"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "unknown config key 'train.bach_size'" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_device_without_a_gpu_is_one_line(digits_config, capsys):
    assert main(["teacher", str(digits_config), "--local", "--set", "train.device=cuda"]) == 2
    assert "train.device is 'cuda' but no CUDA device is available" in one_line_error(capsys)


# ---------------------------------------------------------------- refusals before Ray or MLflow start a run

def job_config(tmp_path: Path, **train) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"name": "synthetic", "image_size": 16}, "teacher": {"arch": "resnet8"},
        "train": {"epochs": 1, "output_dir": str(tmp_path / "outputs"), **train},
        "ray": {"storage_path": str(tmp_path / "ray_results")},
        "tracking": {"run_name": "t1", "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}))
    return path


def test_reusing_a_run_name_needs_resume_and_resume_needs_the_run(tmp_path, capsys):
    path = job_config(tmp_path)
    assert main(["teacher", str(path), "--resume"]) == 2
    assert "--resume: no run named 't1' in" in one_line_error(capsys)
    (tmp_path / "ray_results" / "t1").mkdir(parents=True)  # what an earlier run named t1 left
    assert main(["teacher", str(path)]) == 2
    assert "a run named 't1' already exists" in one_line_error(capsys)
    assert [p.name for p in (tmp_path / "ray_results").iterdir()] == ["t1"]


def test_an_existing_experiment_needs_resume_and_resume_needs_an_experiment(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "base": {"data": {"name": "digits", "image_size": 16}, "student": {"arch": "resnet8"},
                 "teacher": {"arch": "resnet8"}, "ray": {"storage_path": str(tmp_path / "ray_results")},
                 "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}},
        "teacher": "runs:/0123/checkpoint", "search": {"distill.temperature": {"uniform": [1.0, 6.0]}},
        "tune": {"name": "sweep"}}))
    assert main(["tune", str(space), "--resume", str(tmp_path / "ray_results" / "sweep")]) == 2
    assert "no Tune experiment to restore at" in one_line_error(capsys)
    (tmp_path / "ray_results" / "sweep").mkdir(parents=True)
    assert main(["tune", str(space)]) == 2
    assert "experiment 'sweep' already exists" in one_line_error(capsys)


def test_bad_config_key_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hsakd_ray.cli", "teacher", str(job_config(tmp_path)),
                             "--set", "train.epochz=3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("hsakd-ray: error: unknown config key 'train.epochz'; allowed: epochs, ")


def test_unreachable_tracking_server_fails_in_one_line_before_ray_starts(tmp_path):
    with socket.socket() as s:  # bound and released: nothing listens there
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "hsakd_ray.cli", "teacher", str(job_config(tmp_path)),
                             "--tracking-uri", f"http://127.0.0.1:{closed}"], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"hsakd-ray: error: MLflow tracking server http://127.0.0.1:{closed} cannot be reached: ConnectionError"]
    assert "Ray" not in result.stdout + result.stderr  # no "Started a local Ray instance"
    assert not (tmp_path / "ray_results").exists()


def test_cluster_down_without_a_cluster_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hsakd_ray.cli", "cluster", "down", "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("hsakd-ray: error: no local cluster recorded") and result.stderr.count("\n") == 1
