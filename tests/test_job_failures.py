"""Issue 27.7/27.8 (fast part): failures that no retry can fix. A loss that turns NaN or infinite stops the job at that
epoch; a data set that cannot run (an empty class folder, too few images for the validation split) is refused before
anything starts, and an image that cannot be decoded is one line naming the file. On Ray, a worker's user error ends
the Train run without the worker-group restarts of ``ray.max_failures`` (train/failfast.py), and a Tune retry of
such a trial fails at once instead of meeting the error again."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hsakd_ray.cli import main
from hsakd_ray.config import config_from_dict
from hsakd_ray.errors import DataError


def write(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("hsakd-ray: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def image_tree(root: Path, counts: dict[str, int]) -> None:
    from PIL import Image

    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (10 * i, 20, 30 + i)).save(root / name / f"{i}.png")


def folder_config(tmp_path: Path, root: Path, **data) -> str:
    return write(tmp_path / "folder.yaml", {
        "data": {"name": "imagefolder", "root": str(root), "image_size": 16, "val_fraction": 0.0, **data},
        "teacher": {"arch": "resnet8"}, "train": {"epochs": 1, "batch_size": 2, "device": "cpu"},
        "tracking": {"experiment": "failures"}})


# ---------------------------------------------------------------- a diverging loss

DIVERGING = {"data": {"name": "synthetic", "image_size": 16, "synthetic_train_size": 64, "synthetic_test_size": 32,
                      "synthetic_classes": 4},
             "teacher": {"arch": "resnet8"}, "optim": {"lr": 1.0e6, "schedule": "constant", "milestones": []},
             "train": {"epochs": 3, "batch_size": 32, "device": "cpu"}, "tracking": {"experiment": "diverging"}}


def test_a_nan_loss_stops_the_job_at_that_epoch():
    from hsakd_ray.engine import run_job
    from hsakd_ray.errors import TrainingDiverged

    cfg = config_from_dict(DIVERGING)
    reported = []
    from hsakd_ray.engine.runner import Runtime

    with pytest.raises(TrainingDiverged, match=r"^loss diverged at epoch \d \(train/.*train/loss nan") as raised:
        run_job(cfg, "teacher", Runtime(report=lambda epoch, metrics, save: reported.append(epoch)))
    diverged = int(str(raised.value).split()[4])
    assert diverged < 3 and reported == list(range(1, diverged))  # the diverged epoch is not reported (checkpointed)


def test_a_diverging_local_job_fails_in_one_line(cwd, tmp_path, capsys):
    config = write(tmp_path / "diverging.yaml", DIVERGING)
    code = main(["teacher", config, "--local", "--set", f"train.output_dir={cwd / 'out'}"])
    assert code == 2
    assert "loss diverged at epoch " in one_line(capsys)


# ---------------------------------------------------------------- data errors, before anything starts

def test_an_empty_class_folder_of_the_evaluation_tree_is_refused_before_start(cwd, tmp_path, capsys):
    image_tree(tmp_path / "images" / "train", {"cat": 2, "dog": 2})
    image_tree(tmp_path / "images" / "val", {"cat": 1, "dog": 0})
    code = main(["teacher", folder_config(tmp_path, tmp_path / "images")])
    assert code == 2
    err = one_line(capsys)
    assert "evaluation set" in err and "class folders without images: ['dog']" in err
    assert list(cwd.iterdir()) == []  # refused before Ray, MLflow or a run directory


def test_one_image_per_class_with_a_validation_split_is_refused_before_start(cwd, tmp_path, capsys):
    image_tree(tmp_path / "images" / "train", {"cat": 1, "dog": 1})
    image_tree(tmp_path / "images" / "val", {"cat": 1, "dog": 1})
    code = main(["teacher", folder_config(tmp_path, tmp_path / "images", val_fraction=0.1)])
    assert code == 2
    err = one_line(capsys)
    assert "data.val_fraction 0.1" in err and "single training image (['cat', 'dog'])" in err
    assert list(cwd.iterdir()) == []


def test_an_undecodable_image_is_one_line_naming_the_file(cwd, tmp_path, capsys):
    image_tree(tmp_path / "images" / "train", {"cat": 2, "dog": 2})
    image_tree(tmp_path / "images" / "val", {"cat": 1, "dog": 1})
    broken = tmp_path / "images" / "train" / "dog" / "1.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    code = main(["teacher", folder_config(tmp_path, tmp_path / "images"), "--local",
                 "--set", f"train.output_dir={cwd / 'out'}"])
    assert code == 2
    err = one_line(capsys)
    assert f"cannot decode image {broken}" in err


def test_the_checked_loader_refuses_a_truncated_image(tmp_path):
    from PIL import Image

    from hsakd_ray.data.disk import checked_loader

    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot decode image .*a\.png"):
        checked_loader(str(tmp_path / "a.png"))


# ---------------------------------------------------------------- no retries for a user error on Ray

def test_a_workers_user_error_ends_the_train_run_without_a_retry():
    """Ray Train retries any worker error; ``StopOnUserError`` raises a worker's UserError in the controller, which
    Train's failure policy does not retry (checked end to end in test_job_failures_ray.py)."""
    from ray.train import ControllerError

    from hsakd_ray.train.failfast import StopOnUserError, fit_or_user_error, user_error

    error = DataError("cannot decode image /data/x.png")
    StopOnUserError().after_exception(None, {0: RuntimeError("gloo connection reset")})  # retried as before
    with pytest.raises(DataError) as raised:
        StopOnUserError().after_exception(None, {1: RuntimeError("collateral"), 0: error})
    assert raised.value is error
    assert user_error(ControllerError(error)) is error and user_error(ControllerError(RuntimeError())) is None

    def fit():
        raise ControllerError(error)

    with pytest.raises(DataError, match="^cannot decode image /data/x.png$"):
        fit_or_user_error(fit)


def test_a_tune_retry_of_a_trial_that_met_a_user_error_fails_at_once(tmp_path):
    from hsakd_ray.errors import TrainingDiverged
    from hsakd_ray.tune.trial import fail_as_before, remember_failure

    remember_failure(str(tmp_path), "sweep-1", TrainingDiverged("loss diverged at epoch 2 (train/loss nan)"))
    with pytest.raises(TrainingDiverged, match="^loss diverged at epoch 2"):
        fail_as_before(str(tmp_path), "sweep-1")
    fail_as_before(str(tmp_path), "sweep-2")  # --resume: tried afresh (the data may have been fixed)


def test_a_failed_trial_never_wins_whatever_it_reported_before():
    """Issue 27.7: a trial that diverged after good epochs is FAILED; its earlier best does not make it the winner,
    in either mode, and a trial with no value is last too."""
    import math

    import pandas as pd

    from hsakd_ray.tune.results import TrialOutcome, trial_rows

    def outcome(trial_id: str, values: list[float], error: bool = False) -> TrialOutcome:
        history = pd.DataFrame({"epoch": range(1, len(values) + 1), "val/top1": values})
        return TrialOutcome(trial_id, {}, history, {"epoch": len(values)}, error)

    trials = [outcome("none", []), outcome("diverged", [90.0, math.nan], error=True), outcome("ok", [50.0, 60.0]),
              outcome("worse", [40.0])]
    assert [r["trial_id"] for r in trial_rows(trials, "val/top1", "max")] == ["ok", "worse", "none", "diverged"]
    assert [r["trial_id"] for r in trial_rows(trials, "val/top1", "min")] == ["worse", "ok", "none", "diverged"]
