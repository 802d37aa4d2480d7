"""Every shipped search space starts from the published per-pair settings of the reference implementation
(github.com/winycg/HSAKD), searches ranges that contain them, and cites the matching published row."""
from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest

from hsakd_ray.config import Config, config_to_dict
from hsakd_ray.tune.space import load_space

SPACES = Path(__file__).parent.parent / "search_spaces"

# Reference lines below are in winycg/HSAKD at commit 28c8dc2.
# CIFAR-100 student settings shared by every pair (train_student_cifar.py):
CIFAR_STUDENT = {
    "optim.lr": 0.05,                  # train_student_cifar.py:31  --init-lr default 0.05
    "optim.weight_decay": 5e-4,        # train_student_cifar.py:32  --weight-decay 5e-4
    "optim.schedule": "multistep",     # train_student_cifar.py:33  --lr-type multistep
    "optim.milestones": [150, 180, 210],  # train_student_cifar.py:34
    "optim.gamma": 0.1,                # train_student_cifar.py:166  init_lr * 0.1 ** bisect_right(milestones, epoch)
    "train.epochs": 240,               # train_student_cifar.py:37
    "train.batch_size": 64,            # train_student_cifar.py:38
    "distill.temperature": 3.0,        # train_student_cifar.py:42  --kd_T 3
    "distill.alpha": 1.0,              # train_student_cifar.py:216  loss_div += KL(ss_logits[i], t_ss_logits[i])
    "distill.beta": 1.0,               # train_student_cifar.py:218  loss_div += KL(logits, t_logits)
    "optim.momentum": 0.9,             # train_student_cifar.py:353  SGD(momentum=0.9, ..., nesterov=True)
    "optim.nesterov": True,            # train_student_cifar.py:353
    "student.aux_stages": "all",       # train_student_cifar.py:127  one head per backbone stage
}
# CIFAR-100 jointly trained teacher (train_teacher_cifar.sh:1-29 calls train_teacher_cifar.py without --freezed):
CIFAR_TEACHER = {
    "optim.lr": 0.05,                  # train_teacher_cifar.py:29
    "optim.weight_decay": 5e-4,        # train_teacher_cifar.py:30
    "optim.milestones": [150, 180, 210],  # train_teacher_cifar.py:31
    "train.epochs": 240,               # train_teacher_cifar.py:33
    "train.batch_size": 64,            # train_teacher_cifar.py:34
    "optim.momentum": 0.9,             # train_teacher_cifar.py:111  momentum=0.9, ..., nesterov=True
    "optim.nesterov": True,            # train_teacher_cifar.py:111
    "teacher.mode": "joint",           # train_teacher_cifar.sh:1-29  no --freezed
    "teacher.aux_stages": "all",
}
# CIFAR-100 frozen-backbone teacher, the HSAKD column (train_teacher_freezed.sh, README.md:52-59: --freezed with a
# pretrained backbone): the joint teacher's settings but for the schedule.
CIFAR_FROZEN_TEACHER = {
    **CIFAR_TEACHER,
    "optim.milestones": [30, 60, 90],  # train_teacher_freezed.sh:3  --milestones 30 60 90 --epochs 100
    "train.epochs": 100,               # train_teacher_freezed.sh:3
    "teacher.mode": "frozen",          # train_teacher_freezed.sh:8  --freezed
}
FROZEN_SETS = ["teacher.config.teacher.mode=frozen", "teacher.config.teacher.pretrained=backbones/teacher"]
# Per pair: teacher, student, the student's lr and where it comes from (the joint-teacher section of
# train_student_cifar.sh, lines 60-114), and the published top-1: student alone, HSAKD, HSAKD* (README.md:110-121).
PAIRS = {
    # train_student_cifar.sh:67-73, no --init-lr
    "cifar100_wrn40_2_wrn16_2": ("wrn_40_2", "wrn_16_2", 0.05, (73.57, 77.20, 78.67)),
    # train_student_cifar.sh:61-65, no --init-lr
    "cifar100_wrn40_2_wrn40_1": ("wrn_40_2", "wrn_40_1", 0.05, (71.95, 77.00, 78.12)),
    # train_student_cifar.sh:89-93, no --init-lr
    "cifar100_resnet56_resnet20": ("resnet56", "resnet20", 0.05, (69.62, 72.58, 73.73)),
    # train_student_cifar.sh:83-87, no --init-lr
    "cifar100_resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4", 0.05, (72.95, 77.26, 77.69)),
    # train_student_cifar.sh:99  --init-lr 0.01
    "cifar100_vgg13_mobilenetv2": ("vgg13", "mobilenetv2", 0.01, (73.51, 77.45, 79.27)),
    # train_student_cifar.sh:106  --init-lr 0.01
    "cifar100_resnet50_mobilenetv2": ("resnet50", "mobilenetv2", 0.01, (73.51, 78.79, 79.43)),
    # train_student_cifar.sh:80  --init-lr 0.01
    "cifar100_wrn40_2_shufflenetv1": ("wrn_40_2", "shufflenetv1", 0.01, (71.74, 78.51, 80.11)),
    # train_student_cifar.sh:113  --init-lr 0.01
    "cifar100_resnet32x4_shufflenetv2": ("resnet32x4", "shufflenetv2", 0.01, (72.96, 79.93, 80.86)),
}
# ImageNet student (train_student_imagenet.py) and frozen-backbone teacher (train_teacher_imagenet.py):
IMAGENET_STUDENT = {
    "optim.lr": 0.1,                   # train_student_imagenet.py:34
    "optim.weight_decay": 1e-4,        # train_student_imagenet.py:35
    "optim.milestones": [30, 60, 90],  # train_student_imagenet.py:36
    "train.epochs": 100,               # train_student_imagenet.py:38
    "train.batch_size": 256,           # train_student_imagenet.py:39
    "distill.temperature": 3.0,        # train_student_imagenet.py:43
    "optim.momentum": 0.9,             # train_student_imagenet.py:159-160  SGD(momentum=0.9, weight_decay), no Nesterov
    "optim.nesterov": False,           # train_student_imagenet.py:159-160
    "distill.alpha": 1.0,
    "distill.beta": 1.0,
    "student.aux_stages": "all",
}
IMAGENET_TEACHER = {
    "optim.lr": 0.1,                   # train_teacher_imagenet.py:32
    "optim.weight_decay": 1e-4,        # train_teacher_imagenet.py:33
    "optim.milestones": [30, 60, 90],  # train_teacher_imagenet.py:35
    "train.epochs": 100,               # train_teacher_imagenet.py:37
    "train.batch_size": 256,           # train_teacher_imagenet.py:38
    "optim.nesterov": False,           # train_teacher_imagenet.py:156-157  SGD(momentum=0.9, weight_decay)
    "teacher.mode": "frozen",          # README.md:213  --freezed (torchvision ResNet-34 backbone, README.md:204)
}
# ResNet-34 -> ResNet-18: student alone, HSAKD (frozen teacher), HSAKD* (README.md:266).
IMAGENET = ("imagenet_resnet34_resnet18", "resnet34_imagenet", "resnet18_imagenet", (69.75, 72.16, 72.39))


@functools.cache
def space(stem: str):
    return load_space(SPACES / f"{stem}.yaml")


def value(cfg: Config, dotted: str):
    node = config_to_dict(cfg)
    for part in dotted.split("."):
        node = node[part]
    return node


def expected_student(stem: str) -> dict:
    if stem == IMAGENET[0]:
        return {**IMAGENET_STUDENT, "teacher.arch": IMAGENET[1], "student.arch": IMAGENET[2]}
    teacher, student, lr, _ = PAIRS[stem]
    return {**CIFAR_STUDENT, "optim.lr": lr, "teacher.arch": teacher, "student.arch": student}


def expected_teacher(stem: str) -> dict:
    if stem == IMAGENET[0]:
        return {**IMAGENET_TEACHER, "teacher.arch": IMAGENET[1]}
    return {**CIFAR_TEACHER, "teacher.arch": PAIRS[stem][0]}


STEMS = [*PAIRS, IMAGENET[0]]


def test_every_shipped_published_pair_is_in_the_table() -> None:
    shipped = {p.stem for p in SPACES.glob("*.yaml") if p.stem.startswith(("cifar100_", "imagenet_"))}
    assert shipped == set(STEMS)


@pytest.mark.parametrize("stem", STEMS)
def test_student_base_is_the_published_setting(stem: str) -> None:
    base = space(stem).base
    assert {key: value(base, key) for key in expected_student(stem)} == expected_student(stem)


@pytest.mark.parametrize("stem", STEMS)
def test_teacher_is_trained_on_the_published_teacher_setting(stem: str) -> None:
    teacher = space(stem).teacher_config
    assert teacher is not None
    assert {key: value(teacher, key) for key in expected_teacher(stem)} == expected_teacher(stem)


def contains(spec: dict, published) -> bool:
    (kind, args), = spec.items()
    if kind in ("choice", "grid"):
        return any(a == published or (isinstance(a, float) and math.isclose(a, published)) for a in args)
    return args[0] <= published <= args[1]


@pytest.mark.parametrize("stem", STEMS)
def test_every_search_range_contains_the_published_value(stem: str) -> None:
    published = expected_student(stem)
    for key, spec in space(stem).search.items():
        want = published[key]
        if key == "student.aux_stages":  # "all": one head per stage of the student
            n = max(max(c) for c in spec["choice"] if c)
            assert list(range(1, n + 1)) in spec["choice"], f"{stem}: {key} never samples a head on every stage"
        else:
            assert contains(spec, want), f"{stem}: search.{key} {spec} does not contain the published {want}"


@pytest.mark.parametrize("stem", STEMS)
def test_space_cites_the_row_of_its_teacher_mode(stem: str) -> None:
    """Joint teachers are the paper's HSAKD* setting, a frozen backbone its HSAKD setting: cite that row only."""
    alone, hsakd, hsakd_star = IMAGENET[3] if stem == IMAGENET[0] else PAIRS[stem][3]
    header = "".join(line for line in (SPACES / f"{stem}.yaml").read_text().splitlines(True) if line.startswith("#"))
    cited, other = (hsakd_star, hsakd) if space(stem).teacher_config.teacher.mode == "joint" else (hsakd, hsakd_star)
    label = "HSAKD*" if cited == hsakd_star else "HSAKD"
    assert f"{label} {cited:.2f}" in header and f"{alone:.2f}" in header
    assert f"{other:.2f}" not in header


@pytest.mark.parametrize("stem", list(PAIRS))
def test_cifar_frozen_teacher_option_is_the_reference_frozen_backbone_setting(stem: str) -> None:
    """The documented option of every CIFAR space: a frozen backbone's heads train on the reference's 100-epoch
    schedule, the students keep theirs, and the final stage cites the HSAKD column (not HSAKD*)."""
    from hsakd_ray.tune.final_runs import teacher_mode
    from hsakd_ray.tune.published import published_figure

    frozen = load_space(SPACES / f"{stem}.yaml", FROZEN_SETS)
    want = {**CIFAR_FROZEN_TEACHER, "teacher.arch": PAIRS[stem][0]}
    assert {key: value(frozen.teacher_config, key) for key in want} == want
    assert frozen.teacher_config.teacher.pretrained == "backbones/teacher"
    assert {key: value(frozen.base, key) for key in expected_student(stem)} == expected_student(stem)
    assert published_figure(stem, "hsakd", teacher_mode(frozen)) == (PAIRS[stem][3][1], "HSAKD")
    assert published_figure(stem, "hsakd", teacher_mode(space(stem))) == (PAIRS[stem][3][2], "HSAKD*")
    header = (SPACES / f"{stem}.yaml").read_text()
    assert "--set teacher.config.teacher.mode=frozen --set teacher.config.teacher.pretrained=" in header
