"""``--resume`` with a changed space (issue 27, case 5): Tune restores the search space, sample count and scheduler
the experiment started with while trials would read the new base config, so a changed space is refused in one line
naming the changed keys, before Ray starts; the space it started with resumes."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hsakd_ray.cli import main
from hsakd_ray.tune.space import load_space, space_snapshot
from hsakd_ray.tune.sweep_checks import SNAPSHOT, record_space

QUICKSTART = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("hsakd-ray: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture()
def started(tmp_path):
    """(the space file, its raw YAML, the experiment directory) of a sweep that started and was interrupted. Its
    data is missing, so a resume that got past the space check would stop at the data check (before Ray)."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["base"]["data"] = {"name": "imagefolder", "train_root": str(tmp_path / "no_data"), "val_fraction": 0.1}
    raw["tune"]["name"] = "sweep"
    space = write(tmp_path / "space.yaml", raw)
    exp = tmp_path / "ray_results" / "sweep"
    record_space(space_snapshot(load_space(space)), "sweep", str(exp), resume=False)  # what a sweep keeps first
    (exp / "tuner.pkl").write_bytes(b"")  # what Tune's Tuner.can_restore looks for
    return space, raw, exp


@pytest.mark.parametrize("edit, keys", [
    (lambda raw: raw["search"].update({"distill.temperature": {"uniform": [1.0, 9.0]}}), "search.distill.temperature"),
    (lambda raw: raw["tune"].update(num_samples=9), "tune.num_samples"),
    (lambda raw: raw["base"]["train"].update(epochs=3), "train.epochs"),
    (lambda raw: (raw["tune"]["scheduler"].update(grace_period=3), raw["search"].pop("distill.beta")),
     "search.distill.beta, tune.scheduler.grace_period"),
])
def test_resume_with_a_changed_space_is_refused_naming_the_changed_keys(tmp_path, capsys, monkeypatch, started, edit,
                                                                       keys):
    space, raw, exp = started
    edit(raw)
    write(space, raw)
    monkeypatch.chdir(tmp_path)
    assert main(["tune", str(space), "--resume", str(exp)]) == 2
    err = one_line_error(capsys)
    assert f"the space differs from the one this experiment started with ({keys}; kept in {exp / SNAPSHOT})" in err


def test_resume_with_a_changed_override_is_refused_and_the_same_space_passes_the_check(tmp_path, capsys, monkeypatch,
                                                                                      started):
    space, _, exp = started
    monkeypatch.chdir(tmp_path)
    assert main(["tune", str(space), "--resume", str(exp), "--set", "optim.lr=0.1"]) == 2
    assert "started with (optim.lr, teacher.config.optim.lr;" in one_line_error(capsys)  # the teacher reads it too
    assert main(["tune", str(space), "--resume", str(exp), "--set", "ray.address=auto"]) == 2  # allowed to change
    assert "training set not found" in one_line_error(capsys)  # past the space check: the next check's refusal


def test_a_sweep_stopped_before_tune_started_is_resumed_with_its_space_checked(tmp_path, capsys, monkeypatch,
                                                                               started):
    """The snapshot is written before the teacher trains: a sweep interrupted there (no Tune state yet) resumes,
    with an edited space refused like any resume; a plain rerun points to --resume."""
    space, raw, exp = started
    (exp / "tuner.pkl").unlink()  # Tune never started
    (tmp_path / "ray_results" / "sweep-teacher").mkdir()  # the teacher's Train run, interrupted
    monkeypatch.chdir(tmp_path)
    assert main(["tune", str(space)]) == 2
    assert "was interrupted while its teacher trained" in one_line_error(capsys)
    raw["base"]["train"]["epochs"] = 3
    write(tmp_path / "edited.yaml", raw)
    assert main(["tune", str(tmp_path / "edited.yaml"), "--resume", str(exp)]) == 2
    assert "the space differs from the one this experiment started with (train.epochs;" in one_line_error(capsys)
    assert main(["tune", str(space), "--resume", str(exp)]) == 2
    assert "training set not found" in one_line_error(capsys)  # past the resume checks


def test_a_new_sweep_rewrites_a_snapshot_left_before_tune_started_and_a_resume_keeps_it(tmp_path):
    exp = tmp_path / "exp"
    record_space({"train.epochs": 4}, "sweep", str(exp), resume=False)
    record_space({"train.epochs": 3}, "sweep", str(exp), resume=True)
    assert yaml.safe_load((exp / SNAPSHOT).read_text()) == {"train.epochs": 4}
    record_space({"train.epochs": 3}, "sweep", str(exp), resume=False)
    assert yaml.safe_load((exp / SNAPSHOT).read_text()) == {"train.epochs": 3}
