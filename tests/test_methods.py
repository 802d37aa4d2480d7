"""The table of distillation methods (distill/methods.py) is what every layer does: the config accepts exactly its
names, the engine builds each method's networks and loss from its row, and the search space refuses untunable ones."""
from __future__ import annotations

import pytest
import torch
import yaml

from hsakd_ray import distill as D
from hsakd_ray.config import ConfigError, apply_overrides, config_from_dict, dump_config
from hsakd_ray.distill.methods import METHODS
from hsakd_ray.engine import build_task, write_checkpoint
from hsakd_ray.engine.tasks import MutualTask
from hsakd_ray.models import build_model
from hsakd_ray.tune.space import load_space

CLASSES = 4
TINY = {"data": {"name": "synthetic", "image_size": 16, "synthetic_train_size": 8, "synthetic_test_size": 8,
                 "synthetic_classes": CLASSES},
        "teacher": {"arch": "resnet8", "aux_stages": "all"}, "student": {"arch": "resnet8", "aux_stages": "all"},
        "train": {"device": "cpu"}}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    net = build_model("resnet8", CLASSES, "all")
    meta = {"kind": "teacher", "arch": "resnet8", "num_classes": CLASSES, "aux_stages": list(net.aux_stages),
            "epoch": 0, "metrics": {}, "dataset": "synthetic"}
    cfg = config_from_dict(TINY)
    return str(write_checkpoint(tmp_path_factory.mktemp("t") / "ckpt", model_state=net.state_dict(), meta=meta,
                                config_yaml=dump_config(cfg)))


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_builds_and_steps_as_its_row_says(name, teacher):
    method = METHODS[name]
    cfg = config_from_dict(apply_overrides(TINY, [f"distill.method={name}", f"teacher.checkpoint={teacher}"]))
    torch.manual_seed(0)
    task = build_task("distill", cfg, CLASSES)
    assert isinstance(task, MutualTask) == method.trains_peer
    assert (getattr(task, "teacher", None) is not None) == method.needs_teacher
    assert bool(task.network.aux_stages) == method.student_heads
    assert callable(getattr(D, method.loss))
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    if method.needs_teacher:
        inputs = task.teacher_views(x, y)
        _, t_aux = task.teacher_outputs(inputs)
        assert inputs.shape[0] == (8 if method.rotation else 2)
        assert bool(t_aux) == method.teacher_heads  # the teacher's heads are run only when paired
    params = [p for m in task.trainable_modules() for p in m.parameters()]
    parts = task.step(x, y, torch.optim.SGD(params, lr=0.1))
    assert torch.isfinite(parts["loss"])
    assert any(k.startswith("kl_head_") for k in parts) == method.teacher_heads


def test_the_config_accepts_exactly_the_registered_methods():
    for name in METHODS:
        assert config_from_dict({"distill": {"method": name}}).distill.method == name
    with pytest.raises(ConfigError, match="distill.method must be one of 'hsakd', 'kd', 'ce', 'mutual', got 'fitnet'"):
        config_from_dict({"distill": {"method": "fitnet"}})


@pytest.mark.parametrize("name", list(METHODS))
def test_a_search_space_takes_only_tunable_methods(name, tmp_path):
    raw = {"base": {"data": {"name": "digits"}, "teacher": {"arch": "resnet8"}, "student": {"arch": "resnet8"},
                    "distill": {"method": name}},
           "search": {"distill.beta": {"choice": [0.5, 1.0]}}}
    if METHODS[name].needs_teacher:
        raw["teacher"] = "runs:/abc/checkpoint"
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    if METHODS[name].tunable:
        assert load_space(path).base.distill.method == name
    else:
        with pytest.raises(ConfigError, match=f"distill.method '{name}' trains no shared teacher"):
            load_space(path)
