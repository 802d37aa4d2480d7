"""The config schema: defaults, strict validation with one-line errors naming the key, ``--set`` overrides, YAML."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from hsakd_ray.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    dump_config,
    flatten,
    load_config,
    parse_override,
    read_yaml,
)

REPO = Path(__file__).resolve().parents[1]
SECTIONS = [f.name for f in dataclasses.fields(Config)]


def every_key() -> list[tuple[str, str]]:
    return [(s, f.name) for s in SECTIONS for f in dataclasses.fields(getattr(Config(), s))]


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- defaults and round trips

def test_empty_config_is_all_defaults():
    assert config_from_dict({}) == Config()
    assert load_config(None) == Config()


def test_published_defaults():
    cfg = Config()
    assert (cfg.distill.temperature, cfg.distill.alpha, cfg.distill.beta) == (3.0, 1.0, 1.0)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.weight_decay) == (0.05, 0.9, True, 5e-4)
    assert cfg.optim.milestones == [150, 180, 210] and cfg.optim.gamma == 0.1
    assert (cfg.train.epochs, cfg.train.batch_size) == (240, 64)
    assert cfg.teacher.aux_stages == "all" and cfg.student.aux_stages == "all"


# An allowed value other than the default for every key (booleans and one-of keys are flipped / moved below).
NON_DEFAULT = {
    "data.name": "digits", "data.root": "/srv/data", "data.train_root": "/srv/train", "data.val_root": "/srv/val",
    "data.image_size": 24, "data.val_fraction": 0.25, "data.split_seed": 7, "data.few_shot_ratio": 0.5,
    "data.synthetic_train_size": 100, "data.synthetic_test_size": 30, "data.synthetic_classes": 3,
    "data.loader_workers": 2, "data.flip": False, "data.mean": [0.5], "data.std": [0.25],
    "teacher.arch": "resnet8", "teacher.aux_stages": [2, 3], "teacher.checkpoint": "runs:/abc/checkpoint",
    "teacher.pretrained": "/srv/backbone.pt",
    "student.arch": "resnet8", "student.aux_stages": [1, 3], "student.checkpoint": "outputs/s/best",
    "student.pretrained": "/srv/student.pt",
    "distill.method": "kd", "distill.temperature": 4.5, "distill.head_temperature": 2.0, "distill.alpha": 0.5,
    "distill.beta": 2.0,
    "distill.head_weights": [1.0, 0.5, 0.25],  # the default student (wrn_16_2) has 3 heads
    "optim.lr": 0.1, "optim.momentum": 0.5, "optim.weight_decay": 1e-4, "optim.milestones": [10, 20],
    "optim.gamma": 0.5, "optim.warmup_epochs": 3,
    "train.epochs": 30, "train.batch_size": 128, "train.seed": 3, "train.output_dir": "/srv/out",
    "train.checkpoint_every": 5, "train.cpu_chunk_rows": 16, "train.threads": 2, "train.compile": True,
    "scaling.num_workers": 4, "scaling.cpus_per_worker": 0.5, "scaling.gpus_per_worker": 0.25,
    "ray.address": "auto", "ray.storage_path": "s3://bucket/results", "ray.max_failures": -1,
    "tracking.uri": "http://127.0.0.1:5000", "tracking.experiment": "other", "tracking.run_name": "run-1",
    "tracking.register_model": "student",
}


def non_default(section: str, key: str):
    default = getattr(getattr(Config(), section), key)
    if f"{section}.{key}" in NON_DEFAULT:
        return NON_DEFAULT[f"{section}.{key}"]
    if isinstance(default, bool):
        return not default
    tp = {f.name: f.type for f in dataclasses.fields(getattr(Config(), section))}[key]
    options = re.findall(r"'([^']+)'", str(tp)) if str(tp).startswith("Literal") else []
    assert options, f"add an allowed non-default value for {section}.{key} to NON_DEFAULT"
    return next(o for o in options if o != default)


@pytest.mark.parametrize("section,key", every_key(), ids=lambda v: str(v))
def test_every_key_reads_back_a_non_default_value(section, key):
    value = non_default(section, key)
    assert value != getattr(getattr(Config(), section), key)
    cfg = config_from_dict({section: {key: value}})
    assert getattr(getattr(cfg, section), key) == value
    others = {(s, k) for s, k in every_key() if (s, k) != (section, key)}
    assert all(getattr(getattr(cfg, s), k) == getattr(getattr(Config(), s), k) for s, k in others)


@pytest.mark.parametrize("section", SECTIONS)
def test_empty_or_null_section_is_defaults(section):
    assert config_from_dict({section: None}) == Config()
    assert config_from_dict({section: {}}) == Config()


def test_partial_section_keeps_that_sections_defaults():
    cfg = config_from_dict({"teacher": {"checkpoint": "outputs/t/best"}})
    assert cfg.teacher.arch == "wrn_40_2"  # the teacher's default, not the student's (wrn_16_2)
    assert config_from_dict({"student": {"mode": "joint"}}).student.arch == "wrn_16_2"


def test_dumped_config_loads_back_equal(tmp_path):
    cfg = load_config(None, ["student.aux_stages=[2,3]", "optim.milestones=[5]", "distill.head_weights=[1, 0.5]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("name", ["digits_teacher.yaml", "digits_student.yaml"])
def test_example_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.data.name == "digits"


def test_int_is_accepted_for_a_float_key():
    cfg = config_from_dict({"optim": {"lr": 1}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


# ---------------------------------------------------------------- strict validation

def test_unknown_key_names_dotted_key_and_allowed_keys():
    message = error_of({"optim": {"learning_rate": 0.1}})
    assert "'optim.learning_rate'" in message
    for allowed in ("lr", "momentum", "nesterov", "weight_decay", "schedule", "milestones", "gamma", "warmup_epochs"):
        assert allowed in message


def test_unknown_section_lists_sections():
    message = error_of({"trainer": {"epochs": 3}})
    assert "'trainer'" in message
    assert all(s in message for s in SECTIONS)


def test_section_must_be_a_mapping():
    assert "train must be a mapping" in error_of({"train": [1, 2]})


@pytest.mark.parametrize("raw,fragment", [
    ({"train": {"epochs": "ten"}}, "train.epochs must be an integer, got 'ten'"),
    ({"train": {"epochs": 2.5}}, "train.epochs must be an integer"),
    ({"train": {"epochs": True}}, "train.epochs must be an integer"),
    ({"optim": {"lr": "fast"}}, "optim.lr must be a number"),
    ({"optim": {"nesterov": "yes"}}, "optim.nesterov must be true/false"),
    ({"optim": {"milestones": 100}}, "optim.milestones must be a list of integers, got 100"),
    ({"optim": {"milestones": [10, "x"]}}, "optim.milestones[1] must be an integer, got 'x'"),
    ({"distill": {"head_weights": ["a"]}}, "distill.head_weights must be a list of numbers or null"),
    ({"data": {"root": 3}}, "data.root must be a string"),
    ({"teacher": {"checkpoint": 5}}, "teacher.checkpoint must be a string or null"),
    ({"student": {"aux_stages": "some"}}, "student.aux_stages must be one of 'all' or a list of integers"),
])
def test_wrong_type_is_refused(raw, fragment):
    assert fragment in error_of(raw)


@pytest.mark.parametrize("raw,fragment", [
    ({"optim": {"lr": 0}}, "optim.lr must be in (0.0, inf], got 0"),
    ({"optim": {"lr": -0.1}}, "optim.lr must be in (0.0, inf]"),
    ({"optim": {"momentum": 1.5}}, "optim.momentum must be in [0.0, 1.0], got 1.5"),
    ({"optim": {"gamma": 0}}, "optim.gamma must be in (0.0, 1.0]"),
    ({"optim": {"warmup_epochs": -1}}, "optim.warmup_epochs must be in [0, inf]"),
    ({"train": {"epochs": 0}}, "train.epochs must be in [1, inf]"),
    ({"train": {"batch_size": 0}}, "train.batch_size must be in [1, inf]"),
    ({"data": {"few_shot_ratio": 0}}, "data.few_shot_ratio must be in (0.0, 1.0]"),
    ({"data": {"few_shot_ratio": 1.5}}, "data.few_shot_ratio must be in (0.0, 1.0]"),
    ({"data": {"val_fraction": 0.6}}, "data.val_fraction must be in [0.0, 0.5]"),
    ({"data": {"image_size": 8}}, "data.image_size must be in [16, inf]"),
    ({"distill": {"temperature": 0}}, "distill.temperature must be in (0.0, inf]"),
    ({"distill": {"head_temperature": -1}}, "distill.head_temperature must be in (0.0, inf]"),
    ({"distill": {"alpha": -1}}, "distill.alpha must be in [0.0, inf]"),
    ({"distill": {"head_weights": [1, -0.5]}}, "distill.head_weights must be >= 0"),
    ({"optim": {"milestones": [0, 5]}}, "optim.milestones must be epochs >= 1"),
    ({"ray": {"max_failures": -2}}, "ray.max_failures must be in [-1, inf]"),
])
def test_out_of_range_is_refused(raw, fragment):
    assert fragment in error_of(raw)


def test_range_bounds_are_inclusive_where_stated():
    cfg = config_from_dict({"data": {"few_shot_ratio": 1.0, "val_fraction": 0.5}, "optim": {"momentum": 0.0}})
    assert (cfg.data.few_shot_ratio, cfg.data.val_fraction, cfg.optim.momentum) == (1.0, 0.5, 0.0)


@pytest.mark.parametrize("raw,fragment", [
    ({"optim": {"schedule": "step"}}, "optim.schedule must be one of 'multistep', 'cosine', 'constant', got 'step'"),
    ({"distill": {"method": "fitnet"}}, "distill.method must be one of 'hsakd', 'kd', 'ce', 'mutual'"),
    ({"teacher": {"mode": "finetune"}}, "teacher.mode must be one of 'joint', 'frozen'"),
    ({"data": {"name": "mnist"}}, "data.name must be one of 'cifar100'"),
    ({"train": {"device": "tpu"}}, "train.device must be one of 'auto', 'cpu', 'cuda'"),
])
def test_bad_literal_lists_allowed_values(raw, fragment):
    assert fragment in error_of(raw)


def test_unknown_arch_lists_architectures():
    message = error_of({"student": {"arch": "resnet9"}})
    assert "student.arch 'resnet9' is unknown" in message and "resnet8" in message and "wrn_40_2" in message


@pytest.mark.parametrize("section,arch,stages,bad", [
    ("student", "resnet8", [4], [4]),
    ("student", "resnet8", [0, 2], [0]),
    ("teacher", "wrn_40_2", [1, 5], [5]),
])
def test_aux_stages_out_of_range_for_the_arch(section, arch, stages, bad):
    message = error_of({section: {"arch": arch, "aux_stages": stages}})
    assert f"{section}.aux_stages {bad} not in 1..3" in message and arch in message


def test_aux_stages_in_range_for_a_four_stage_arch():
    cfg = config_from_dict({"student": {"arch": "vgg8", "aux_stages": [4]}, "teacher": {"arch": "vgg13"}})
    assert cfg.student.aux_stages == [4]
    assert config_from_dict({"student": {"aux_stages": []}}).student.aux_stages == []


# The student-placement-vs-teacher-heads check needs the teacher checkpoint's heads, so it happens where the
# checkpoint is read: see tests/test_engine.py::test_student_placement_not_in_teacher_heads_is_refused.


def test_head_weights_need_one_weight_per_student_head():
    message = error_of({"student": {"arch": "resnet8", "aux_stages": [2, 3]}, "distill": {"head_weights": [1, 1, 1]}})
    assert "distill.head_weights has 3 entries" in message and "2 heads" in message
    assert "3 heads" in error_of({"student": {"arch": "resnet8"}, "distill": {"head_weights": [1]}})
    cfg = config_from_dict({"student": {"arch": "vgg8"}, "distill": {"head_weights": [0, 0.5, 1, 1]}})
    assert cfg.distill.head_weights == [0.0, 0.5, 1.0, 1.0]


def test_fractional_gpus_with_several_workers_is_refused():
    message = error_of({"scaling": {"use_gpu": True, "gpus_per_worker": 0.5, "num_workers": 2}})
    assert "scaling.gpus_per_worker" in message


# ---------------------------------------------------------------- --set overrides

@pytest.mark.parametrize("text,expected", [
    ("train.epochs=5", (["train", "epochs"], 5)),
    ("optim.lr=0.1", (["optim", "lr"], 0.1)),
    ("optim.lr=1e-3", (["optim", "lr"], 0.001)),
    ("optim.weight_decay=5E-4", (["optim", "weight_decay"], 0.0005)),
    ("optim.milestones=[10, 20]", (["optim", "milestones"], [10, 20])),
    ("teacher.checkpoint=null", (["teacher", "checkpoint"], None)),
    ("teacher.checkpoint=", (["teacher", "checkpoint"], None)),
    ("optim.nesterov=false", (["optim", "nesterov"], False)),
    ("data.name=digits", (["data", "name"], "digits")),
    ("tracking.run_name=a=b", (["tracking", "run_name"], "a=b")),
])
def test_parse_override_values(text, expected):
    assert parse_override(text) == expected


def test_overrides_apply_on_top_of_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 3, seed: 1}\nstudent: {arch: resnet8}\n")
    cfg = load_config(path, ["train.epochs=7", "optim.lr=1e-2", "student.aux_stages=[2, 3]",
                             "teacher.checkpoint=null", "distill.head_weights=[0.5, 1]"])
    assert (cfg.train.epochs, cfg.train.seed) == (7, 1)
    assert cfg.optim.lr == 0.01
    assert cfg.student.arch == "resnet8" and cfg.student.aux_stages == [2, 3]
    assert cfg.teacher.checkpoint is None
    assert cfg.distill.head_weights == [0.5, 1.0]


def test_later_override_wins():
    assert load_config(None, ["train.epochs=3", "train.epochs=4"]).train.epochs == 4


def test_exponent_float_without_dot_in_a_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 1e-2, weight_decay: 5e-4}\n")
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (0.01, 0.0005)


@pytest.mark.parametrize("text,fragment", [
    ("train.epochs", "must look like section.key=value"),
    ("epochs=3", "must be dotted"),
    ("train..epochs=3", "must be dotted"),
    (".epochs=3", "must be dotted"),
])
def test_bad_override_syntax(text, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(None, [text])


@pytest.mark.parametrize("text,fragment", [
    ("train.epoch=3", "unknown config key 'train.epoch'"),
    ("trainer.epochs=3", "unknown config key 'trainer'"),
    ("optim.lr=abc", "optim.lr must be a number, got 'abc'"),
    ("optim.lr=", "optim.lr must be a number, got None"),
])
def test_overrides_are_validated_like_the_file(text, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(None, [text])


# ---------------------------------------------------------------- files

def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_malformed_yaml_reports_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  name: digits\ntrain: {epochs: 3\noptim:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    message = str(info.value)
    assert "is not valid YAML" in message and re.search(r"line \d+", message) and "\n" not in message


def test_malformed_yaml_line_number_is_the_offending_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  name: digits\n  root: ./data\n\tbatch: 3\n")
    with pytest.raises(ConfigError, match="line 4"):
        read_yaml(path)


def test_file_must_hold_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- data\n- train\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)


def test_yaml_tags_that_build_objects_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("train: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("text", ["", "# nothing\n"])
def test_empty_file_is_refused_not_all_defaults(tmp_path, text):
    """An empty file used to run cifar100 from ./data with every default (issue 11): it is refused, by name."""
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"empty\.yaml' is empty"):
        load_config(path)


# ---------------------------------------------------------------- the reference stays in sync

def test_configuration_reference_documents_every_key():
    text = (REPO / "docs" / "configuration.md").read_text()
    missing = [f"{s}.{k}" for s, k in every_key() if f"`{s}.{k}`" not in text]
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_flatten_names_params_by_their_dotted_keys():
    """What a job logs as MLflow params: one ``section.key`` per config key, values as written."""
    cfg = load_config(None, ["optim.lr=0.1", "student.aux_stages=[2, 3]", "tracking.run_name=r1"])
    flat = flatten(config_to_dict(cfg))
    assert flat["optim.lr"] == 0.1 and flat["student.aux_stages"] == [2, 3] and flat["tracking.run_name"] == "r1"
    assert flat["teacher.arch"] == "wrn_40_2" and flat["optim.milestones"] == [150, 180, 210]
    assert flat["teacher.checkpoint"] is None and flat["train.epochs"] == 240
    assert len(flat) == len(every_key()) and all(key.count(".") == 1 for key in flat)
