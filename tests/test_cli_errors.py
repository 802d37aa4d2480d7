"""Bad input and faults at the command line (issue 11, 12.4): refused before Ray or MLflow start, in one line on
stderr with exit code 2, no traceback, nothing written in the working directory; anything that is not a user error
is a one-line "internal error" with exit code 1 (the traceback only with --debug or HSAKD_DEBUG=1)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hsakd_ray import cli
from hsakd_ray.cli import main

REPO = Path(__file__).resolve().parents[1]
TEACHER = str(REPO / "configs" / "digits_teacher.yaml")
# runs the CLI as `python -m hsakd_ray.cli` does, then says whether Ray / MLflow were imported at all
PROBE = ("import sys; from hsakd_ray.cli import main; code = main(sys.argv[1:]); "
         "print('imported:', *sorted({'ray', 'mlflow'} & set(sys.modules))); sys.exit(code)")


def refused(capsys, argv: list[str], cwd: Path) -> str:
    """Run the CLI in-process in ``cwd``; it must refuse with exit 2, one stderr line, and write nothing."""
    before = sorted(p.name for p in cwd.iterdir())
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("hsakd-ray: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "\x1b[" not in err
    assert sorted(p.name for p in cwd.iterdir()) == before, "a refused command wrote into the working directory"
    return err


def write(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ---------------------------------------------------------------- config files and overrides

def test_override_that_is_not_yaml_is_one_line_in_a_subprocess(cwd):
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "hsakd_ray.cli", "teacher", TEACHER, "--set", "optim.milestones=[1,2"],
                         cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert "--set optim.milestones: value '[1,2' is not valid YAML" in out.stderr
    assert list(cwd.iterdir()) == []
    print(f"refused in {time.monotonic() - started:.1f} s")


def test_binary_config_names_the_file(cwd, capsys):
    (cwd.parent / "model.yaml").write_bytes(bytes(range(256)) * 4)
    err = refused(capsys, ["teacher", str(cwd.parent / "model.yaml")], cwd)
    assert "model.yaml' is not a text file" in err


def test_directory_given_as_config_is_called_a_directory(cwd, capsys):
    err = refused(capsys, ["teacher", str(cwd.parent)], cwd)
    assert "is a directory" in err and "not found" not in err


def test_empty_config_is_refused_as_empty(cwd, capsys):
    (cwd.parent / "empty.yaml").write_text("")
    err = refused(capsys, ["teacher", str(cwd.parent / "empty.yaml"), "--local"], cwd)
    assert "empty.yaml' is empty" in err


# ---------------------------------------------------------------- what the job needs

@pytest.mark.parametrize("method", ["hsakd", "kd"])
def test_distill_without_teacher_checkpoint_is_refused_before_start(cwd, capsys, method):
    argv = ["distill", TEACHER, "--set", f"distill.method={method}", "--set", "teacher.checkpoint=null"]
    err = refused(capsys, argv, cwd)
    assert f"distill.method '{method}' needs teacher.checkpoint" in err


def test_distill_without_teacher_checkpoint_is_refused_with_local_too(cwd, capsys):
    err = refused(capsys, ["distill", TEACHER, "--local"], cwd)
    assert "needs teacher.checkpoint" in err


def image_tree(root: Path, classes: list[str]) -> None:
    from PIL import Image

    for name in classes:
        (root / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / name / "a.png")


def test_imagefolder_root_missing_is_refused(cwd, capsys):
    config = write(cwd.parent / "folder.yaml", {"data": {"name": "imagefolder", "root": str(cwd.parent / "none")}})
    err = refused(capsys, ["teacher", config], cwd)
    assert "imagefolder training set not found" in err and "none/train" in err


def test_imagefolder_val_classes_that_differ_are_refused(cwd, capsys):
    root = cwd.parent / "images"
    image_tree(root / "train", ["cat", "dog"])
    image_tree(root / "val", ["cat", "fox"])
    config = write(cwd.parent / "folder.yaml", {"data": {"name": "imagefolder", "root": str(root), "image_size": 16},
                                                "train": {"batch_size": 2}})
    err = refused(capsys, ["teacher", config, "--local"], cwd)
    assert "class folders of" in err and "'fox'" in err and "'dog'" in err


def test_batch_larger_than_the_training_set_is_refused(cwd, capsys):
    err = refused(capsys, ["teacher", TEACHER, "--set", "train.batch_size=5000"], cwd)
    assert "train.batch_size 5000 is larger than the training set (1438 images of digits)" in err


# ---------------------------------------------------------------- checkpoints and the tracking store

@pytest.mark.parametrize("ref", ["runs:/0123456789abcdef/checkpoint", "models:/no-such-model/1"])
def test_reference_into_a_store_that_does_not_exist_leaves_no_store(cwd, capsys, ref):
    err = refused(capsys, ["distill", TEACHER, "--set", f"teacher.checkpoint={ref}"], cwd)
    assert "not found" in err and "does not exist yet" in err


@pytest.mark.parametrize("ref", ["runs:/0123456789abcdef/checkpoint", "models:/no-such-model/1"])
def test_reference_that_does_not_exist_in_the_store_is_refused(cwd, capsys, ref):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{cwd.parent / 'store.db'}"
    MlflowClient(uri).search_experiments()  # the store exists, the run and the model do not
    capsys.readouterr()  # MLflow's own lines about creating the store
    err = refused(capsys, ["distill", TEACHER, "--tracking-uri", uri, "--set", f"teacher.checkpoint={ref}"], cwd)
    assert f"'{ref}' not found in {uri}" in err


def test_unknown_tracking_scheme_is_refused_before_ray_in_a_subprocess(cwd):
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", PROBE, "teacher", TEACHER, "--tracking-uri", "foo://bar"],
                         cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "unknown scheme 'foo'" in out.stderr, out.stderr
    assert out.stdout.strip() == "imported:", out.stdout  # neither Ray nor MLflow was even imported
    assert list(cwd.iterdir()) == []
    print(f"refused in {time.monotonic() - started:.1f} s")


def test_unreachable_tracking_server_is_refused(cwd, capsys):
    from conftest import free_port

    err = refused(capsys, ["teacher", TEACHER, "--tracking-uri", f"http://127.0.0.1:{free_port()}"], cwd)
    assert "cannot be reached" in err


def test_unwritable_storage_path_is_refused(cwd, capsys):
    err = refused(capsys, ["teacher", TEACHER, "--set", "ray.storage_path=/proc/nope"], cwd)
    assert "ray.storage_path '/proc/nope' cannot be written" in err


def test_unwritable_output_dir_is_refused_before_the_first_epoch_with_local(cwd, capsys):
    err = refused(capsys, ["teacher", TEACHER, "--local", "--set", "train.output_dir=/proc/nope"], cwd)
    assert "train.output_dir '/proc/nope' cannot be written" in err


# ---------------------------------------------------------------- resources Ray can never give

def test_more_cpus_than_the_machine_has_is_refused_before_ray_in_a_subprocess(cwd):
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", PROBE, "teacher", TEACHER, "--set", "scaling.cpus_per_worker=4096"],
                         cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "needs 4096 CPUs (1 worker x 4096) but this machine has" in out.stderr
    assert out.stdout.strip() == "imported:", out.stdout
    assert list(cwd.iterdir()) == []
    print(f"refused in {time.monotonic() - started:.1f} s")


def test_more_workers_than_cpus_is_refused(cwd, capsys):
    from hsakd_ray.train.job_checks import cpu_count

    workers = int(cpu_count()) + 1
    err = refused(capsys, ["teacher", TEACHER, "--set", f"scaling.num_workers={workers}",
                           "--set", "scaling.cpus_per_worker=1", "--set", f"train.batch_size={workers * 8}"], cwd)
    assert f"needs {workers} CPUs ({workers} workers x 1)" in err


def test_gpu_on_a_machine_without_one_is_refused(cwd, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = refused(capsys, ["teacher", TEACHER, "--set", "scaling.use_gpu=true"], cwd)
    assert "needs 1 GPU (1 worker x 1) but this machine has 0" in err


# ---------------------------------------------------------------- not a user error

def boom(args):
    raise ValueError("an index went wrong \x1b[31minside\x1b[0m")


def test_an_internal_error_is_one_line_and_exit_1_not_bad_input(monkeypatch, capsys):
    monkeypatch.setattr(cli, "cmd_models", boom)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert err == "hsakd-ray: internal error: ValueError: an index went wrong inside (rerun with --debug for the " \
                  "traceback)\n"


@pytest.mark.parametrize("how", ["flag", "flag-after-command", "env"])
def test_debug_shows_the_traceback_of_an_internal_error(monkeypatch, capsys, how):
    monkeypatch.setattr(cli, "cmd_models", boom)
    argv = {"flag": ["--debug", "models"], "flag-after-command": ["models", "--debug"], "env": ["models"]}[how]
    if how == "env":
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "in boom" in err and err.rstrip().splitlines()[-1].startswith("hsakd-ray: internal")


def test_keyboard_interrupt_is_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_models", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err == "hsakd-ray: interrupted\n"


@pytest.mark.parametrize("data, batch, message", [
    ({"name": "imagefolder", "root": "missing-images"}, 16, "imagefolder training set not found"),
    ({"name": "digits", "image_size": 16}, 4096, "larger than the training set"),
])
def test_tune_preflight_bug_a_bad_base_data_section_is_refused_before_ray_when_the_teacher_is_a_reference(
        cwd, data, batch, message):
    """With a given teacher checkpoint no teacher job is configured, so nothing but the base config's own data check
    stands between a missing ImageFolder root (or a batch larger than the data) and Ray starting every trial only
    for each to fail late."""
    teacher = cwd.parent / "teacher"
    teacher.mkdir()
    (teacher / "meta.json").write_text("{}")
    space = write(cwd.parent / "space.yaml", {
        "base": {"data": {**data, "root": str(cwd.parent / data.get("root", "data"))},
                 "teacher": {"arch": "resnet8"}, "student": {"arch": "resnet8"}, "train": {"batch_size": batch}},
        "teacher": {"checkpoint": str(teacher)},
        "search": {"distill.temperature": {"grid": [2.0, 4.0]}},
        "tune": {"name": "s", "search_alg": "grid", "resources": {"num_workers": 1, "cpus_per_worker": 0.5}}})
    out = subprocess.run([sys.executable, "-c", PROBE, "tune", space], cwd=cwd, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert out.stdout.strip() == "imported:", out.stdout
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("extra, message", [
    (["--tracking-uri", "foo://bar"], "unknown scheme 'foo'"),
    (["--set", "scaling.cpus_per_worker=4096"], "needs 4096 CPUs"),
])
def test_tune_refusals_come_before_ray_and_mlflow_are_imported(cwd, extra, message):
    """`hsakd-ray tune` checks the space, tracking URI, storage and resources first (tune/sweep_checks.py): a refusal
    imports neither Ray nor MLflow, so it takes the seconds of the checks, not of those imports."""
    space = str(REPO / "search_spaces" / "quickstart.yaml")
    if "scaling.cpus_per_worker=4096" in extra:  # the space's own tune.resources ask it
        raw = yaml.safe_load(Path(space).read_text())
        raw["tune"]["resources"]["cpus_per_worker"] = 4096
        space, extra = write(cwd.parent / "big.yaml", raw), []
    out = subprocess.run([sys.executable, "-c", PROBE, "tune", space, *extra],
                         cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert out.stdout.strip() == "imported:", out.stdout
    assert list(cwd.iterdir()) == []
