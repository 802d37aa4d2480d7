"""One head-placement rule (models.student_head_stages): a student's ``all`` counts the student's own stages, and
every student head needs a teacher head at its stage. The search-space loader, the sweep's check of a resolved
teacher and the checkpoint loader all apply it, so a wrong placement is refused before any teacher trains."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from hsakd_ray.config import Config, ConfigError, config_from_dict, dump_config
from hsakd_ray.engine import write_checkpoint
from hsakd_ray.engine.checkpoint import CheckpointError, load_network
from hsakd_ray.models import PlacementError, build_model, student_head_stages
from hsakd_ray.tune.space import load_space

QUICKSTART = Path(__file__).parent.parent / "search_spaces" / "quickstart.yaml"


def test_all_counts_the_students_own_stages() -> None:
    assert student_head_stages("mobilenetv2", "all") == (1, 2, 3, 4)
    assert student_head_stages("wrn_16_2", "all", [1, 2, 3]) == (1, 2, 3)
    assert student_head_stages("mobilenetv2", [4, 2], [1, 2, 3, 4]) == (2, 4)


def test_a_student_with_more_stages_than_the_teacher_has_heads_is_refused() -> None:
    with pytest.raises(PlacementError, match=r"mobilenetv2 heads at stages \[1, 2, 3, 4\]\) needs teacher heads at "
                                             r"stages \[4\], but the teacher has heads at \[1, 2, 3\]") as info:
        student_head_stages("mobilenetv2", "all", [1, 2, 3])
    assert info.value.missing == [4]


def test_a_stage_the_student_lacks_is_refused() -> None:
    with pytest.raises(PlacementError, match=r"\[4\] out of range: wrn_16_2 has stages 1\.\.3"):
        student_head_stages("wrn_16_2", [4], [1, 2, 3, 4])


def space_with(tmp_path: Path, student: dict, search: dict | None = None, teacher: str | None = None) -> Path:
    """The quickstart (resnet14 teacher, 3 stages, heads everywhere, trained by the sweep) with another student,
    or with a ``teacher`` checkpoint reference, whose heads are known only once it is resolved."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    if teacher:
        raw["teacher"] = teacher
    raw["base"]["student"] = student
    raw["search"] = search or {"distill.temperature": {"uniform": [1.0, 6.0]}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_slipped_case_is_refused_when_the_space_loads(tmp_path: Path) -> None:
    """A 4-stage student's ``all`` against a 3-stage teacher config: refused by load_space, before any training
    (it was expanded with the teacher's stage count and passed, then failed after the teacher had trained)."""
    path = space_with(tmp_path, {"arch": "mobilenetv2", "aux_stages": "all"})
    with pytest.raises(ConfigError, match=r"^student\.aux_stages: .*needs teacher heads at stages \[4\]"):
        load_space(path)
    searched = space_with(tmp_path, {"arch": "mobilenetv2"}, {"student.aux_stages": {"choice": [[3], "all"]}})
    with pytest.raises(ConfigError, match=r"^search\.student\.aux_stages: .*needs teacher heads at stages \[4\]"):
        load_space(searched)


def test_a_placement_within_the_teachers_heads_loads(tmp_path: Path) -> None:
    space = load_space(space_with(tmp_path, {"arch": "mobilenetv2", "aux_stages": [1, 2, 3]}))
    assert space.base.student.aux_stages == [1, 2, 3]


def test_kd_needs_no_paired_heads(tmp_path: Path) -> None:
    raw = yaml.safe_load(space_with(tmp_path, {"arch": "mobilenetv2", "aux_stages": "all"}).read_text())
    raw["base"]["distill"] = {"method": "kd"}
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(raw))
    load_space(tmp_path / "kd.yaml")


def test_the_sweep_check_of_a_resolved_teacher_uses_the_rule(tmp_path: Path) -> None:
    from hsakd_ray.tune.experiment import check_placements

    space = load_space(space_with(tmp_path, {"arch": "mobilenetv2", "aux_stages": [1, 2, 3]},
                                  {"student.aux_stages": {"choice": [[2, 3], "all"]}}, teacher="runs:/abc/checkpoint"))
    check_placements(space, [1, 2, 3, 4])
    with pytest.raises(ConfigError, match=r"needs teacher heads at stages \[4\]"):
        check_placements(space, [1, 2, 3])


def teacher_checkpoint(tmp_path: Path, net) -> Path:
    meta = {"kind": "teacher", "arch": net.arch, "num_classes": net.num_classes, "aux_stages": list(net.aux_stages),
            "epoch": 0, "metrics": {}}
    return write_checkpoint(tmp_path / "t", model_state=net.state_dict(), meta=meta,
                            config_yaml=dump_config(Config()))


def test_the_checkpoint_loader_counts_the_students_stages(tmp_path: Path) -> None:
    net = build_model("resnet8", 4, "all")
    path = teacher_checkpoint(tmp_path, net)
    assert load_network(path, "resnet8", "all", student_arch="wrn_16_1").aux_stages == (1, 2, 3)
    with pytest.raises(CheckpointError, match=r"has heads at stages \[1, 2, 3\]; stages \[4\] were asked for"):
        load_network(path, "resnet8", "all", student_arch="mobilenetv2")
    torch.testing.assert_close(load_network(path, "resnet8", [2]).heads[0].fc.weight, net.heads[1].fc.weight)


def test_a_distill_job_checks_the_students_placement_on_the_driver(tmp_path: Path) -> None:
    """Before any Train worker starts, ``hsakd-ray distill`` loads the teacher for the student's own placement."""
    from hsakd_ray.train.job import read_start_checkpoint

    path = teacher_checkpoint(tmp_path, build_model("resnet8", 4, "all"))
    cfg = config_from_dict({"data": {"name": "synthetic", "synthetic_classes": 4},
                            "teacher": {"arch": "resnet8", "checkpoint": str(path)},
                            "student": {"arch": "mobilenetv2", "aux_stages": "all"},
                            "train": {"output_dir": str(tmp_path / "out")}})
    with pytest.raises(CheckpointError, match=r"stages \[4\] were asked for"):
        read_start_checkpoint(cfg, "distill", f"sqlite:///{tmp_path}/mlflow.db")
    cfg.student.aux_stages = [2, 3]
    assert read_start_checkpoint(cfg, "distill", f"sqlite:///{tmp_path}/mlflow.db")
