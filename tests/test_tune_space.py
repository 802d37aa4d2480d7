"""Search spaces: every shipped space validates; each kind of bad input is refused before any trial starts."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from hsakd_ray.config import ConfigError
from hsakd_ray.tune.searchers import build_trial_scheduler, param_space
from hsakd_ray.tune.space import final_config, load_space, trial_config
from hsakd_ray.tune.trial import restart_run_name

SPACES = sorted((Path(__file__).parent.parent / "search_spaces").glob("*.yaml"))
QUICKSTART = Path(__file__).parent.parent / "search_spaces" / "quickstart.yaml"


def test_every_published_pair_and_examples_are_shipped():
    names = {p.stem for p in SPACES}
    assert {"quickstart", "pbt_digits", "imagenet_resnet34_resnet18"} <= names
    assert len([n for n in names if n.startswith("cifar100_")]) == 8


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_space_validates(path):
    space = load_space(path)
    assert space.search and (space.teacher_ref or space.teacher_config)
    assert space.base.data.val_fraction > 0  # trials tune on validation, never on test
    assert "params" in param_space(space)
    build_trial_scheduler(space)


def test_published_settings_are_the_cifar_base():
    space = load_space(QUICKSTART.parent / "cifar100_wrn40_2_wrn16_2.yaml")
    o, t, d = space.base.optim, space.base.train, space.base.distill
    assert (o.lr, o.weight_decay, o.momentum, o.nesterov, o.milestones) == (0.05, 5e-4, 0.9, True, [150, 180, 210])
    assert (t.epochs, t.batch_size, d.temperature, d.alpha, d.beta) == (240, 64, 3.0, 1.0, 1.0)
    assert space.teacher_config.teacher.arch == "wrn_40_2"


def test_trial_config_applies_sampled_values_and_resources(tmp_path):
    path = write_space(tmp_path, tune__resources={"num_workers": 2, "cpus_per_worker": 0.5})
    cfg = trial_config(load_space(path), {"student.aux_stages": [2, 3], "distill.temperature": 4.5})
    assert cfg.student.aux_stages == [2, 3] and cfg.distill.temperature == 4.5
    assert (cfg.scaling.num_workers, cfg.scaling.cpus_per_worker, cfg.scaling.use_gpu) == (2, 0.5, False)


def test_randint_and_quniform_draw_the_values_they_promise(tmp_path):
    """``randint: [lo, hi]`` draws integers lo..hi-1 (hi excluded, as in Tune); ``quniform: [lo, hi, q]`` draws
    multiples of q in [lo, hi]. The drawn values go through the config like any sampled value."""
    path = write_space(tmp_path, search={"train.batch_size": {"randint": [30, 34]},
                                         "distill.temperature": {"quniform": [1.0, 3.0, 0.5]}})
    space = load_space(path)
    params = param_space(space)["params"]
    rng = np.random.default_rng(0)
    sizes = [params["train.batch_size"].sample(random_state=rng) for _ in range(300)]  # one at a time, as Tune does
    temperatures = [params["distill.temperature"].sample(random_state=rng) for _ in range(300)]
    assert set(sizes) == {30, 31, 32, 33} and {type(v) for v in sizes} == {int}
    assert set(temperatures) == {1.0, 1.5, 2.0, 2.5, 3.0}
    cfg = trial_config(space, {"train.batch_size": sizes[0], "distill.temperature": temperatures[0]})
    assert (cfg.train.batch_size, cfg.distill.temperature) == (sizes[0], temperatures[0])


def test_randint_values_are_checked_against_the_config_before_any_trial(tmp_path):
    with pytest.raises(ConfigError, match=r"search.train.epochs: value 0 does not fit"):
        load_space(write_space(tmp_path, search={"train.epochs": {"randint": [0, 3]}}))
    with pytest.raises(ConfigError, match=r"quniform needs \[lo, hi, q\]"):
        load_space(write_space(tmp_path, search={"distill.temperature": {"quniform": [1.0, 3.0]}}))


def test_pbt_restart_run_names_are_the_same_in_every_process():
    """Python's hash() of a str is salted per process; the name of a Train run restarted from a donor must not be,
    or a restored driver would look for another run."""
    code = ("from hsakd_ray.tune.trial import restart_run_name; "
            "print(restart_run_name('abc_00001', '/results/pbt-trials/abc_00000/checkpoint_000002'))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    name = restart_run_name("abc_00001", "/results/pbt-trials/abc_00000/checkpoint_000002")
    assert other == name and name.startswith("abc_00001-from-")
    assert name != restart_run_name("abc_00001", "/results/pbt-trials/abc_00000/checkpoint_000003")


def test_best_config_trains_on_the_whole_training_set():
    space = load_space(QUICKSTART)
    raw = final_config(space, {"distill.alpha": 0.5}, "runs:/abc/checkpoint")
    assert raw["data"]["val_fraction"] == 0.0
    assert raw["teacher"]["checkpoint"] == "runs:/abc/checkpoint" and raw["distill"]["alpha"] == 0.5


def write_space(tmp_path, **changes):
    raw = yaml.safe_load(QUICKSTART.read_text())
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            raw[section][sub] = value
        else:
            raw[section] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"search": {"distill.temprature": {"uniform": [1, 2]}}}, "distill.temprature"),
    ({"search": {"distill.temperature": {"normal": [1, 2]}}}, "unknown distribution 'normal'"),
    ({"search": {"distill.temperature": {"uniform": [3, 1]}}}, "lo < hi"),
    ({"search": {"distill.temperature": {"uniform": [1]}}}, "uniform needs"),
    ({"search": {"optim.lr": {"loguniform": [0, 1]}}}, "loguniform needs lo > 0"),
    ({"search": {"temperature": {"choice": [1, 2]}}}, "dotted config key"),
    ({"search": {"student.aux_stages": {"choice": [[1, 2, 3], [4]]}}}, "student.aux_stages"),
    ({"tune__scheduler": {"type": "hyperband"}}, "tune.scheduler.type 'hyperband'"),
    ({"tune__search_alg": "bayes"}, "tune.search_alg 'bayes'"),
    ({"tune__resources": {"num_workers": 2, "gpus_per_worker": 0.25}}, "fractional GPUs"),
    ({"tune__bogus": 1}, "tune.bogus"),
    ({"teacher": 12}, "teacher must be"),
])
def test_bad_input_is_refused_with_the_key_named(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_space(write_space(tmp_path, **changes))


def test_student_placement_must_be_subset_of_teacher_heads(tmp_path):
    path = write_space(tmp_path, teacher={"config": {"teacher": {"arch": "resnet14", "aux_stages": [3]}}})
    with pytest.raises(ConfigError, match=r"needs teacher heads at stages \[1, 2\]"):
        load_space(path)


def test_pbt_mutates_only_continuous_distillation_and_optimiser_keys(tmp_path):
    path = write_space(tmp_path, tune__scheduler={"type": "pbt", "hyperparam_mutations": {
        "student.aux_stages": {"choice": [[3]]}}})
    with pytest.raises(ConfigError, match="PBT can mutate only"):
        load_space(path)


def test_optuna_missing_gives_a_clear_error(tmp_path):
    pytest.importorskip("ray")
    try:
        import optuna  # noqa: F401
        pytest.skip("optuna is installed")
    except ImportError:
        pass
    from hsakd_ray.tune.searchers import build_search_alg

    space = load_space(write_space(tmp_path, tune__search_alg="optuna"))
    with pytest.raises(ConfigError, match=r"pip install 'hsakd-ray\[optuna\]'"):
        build_search_alg(space, 1)


def test_default_concurrency_counts_each_trial_driver_with_its_worker_group(tmp_path):
    """Tune reserves only a trial's driver (0.05 CPU): on 2 CPUs two 1-CPU trials need 2.1 CPUs, so one runs at a
    time (else the second worker group waits on the first trial's CPUs until its start-up timeout)."""
    from hsakd_ray.tune.space import load_space
    from hsakd_ray.tune.trial import default_concurrency

    raw = yaml.safe_load((Path(__file__).parent.parent / "search_spaces" / "quickstart.yaml").read_text())
    raw["tune"]["resources"]["cpus_per_worker"] = 1
    (tmp_path / "one_cpu.yaml").write_text(yaml.safe_dump(raw))
    space = load_space(str(tmp_path / "one_cpu.yaml"))
    assert default_concurrency(space, {"CPU": 2.0}) == 1
    assert default_concurrency(space, {"CPU": 2.2}) == 2
    quickstart = load_space(str(Path(__file__).parent.parent / "search_spaces" / "quickstart.yaml"))
    assert default_concurrency(quickstart, {"CPU": 2.0}) == 2  # 2 x (0.95 + 0.05): its trials side by side
    pbt = load_space(str(Path(__file__).parent.parent / "search_spaces" / "pbt_digits.yaml"))
    assert default_concurrency(pbt, {"CPU": 2.0}) == 4  # 4 x (0.45 + 0.05): its trials side by side


def test_worker_threads_match_the_cpus_a_worker_reserves():
    """A worker's intra-op threads are its reserved CPUs rounded: 0.95 CPU (a core less a trial driver's share, the
    quickstart's) is 1 thread, 1.95 is 2, and a fraction below one half still gets a thread."""
    from hsakd_ray.train.worker import worker_threads

    assert [worker_threads(c) for c in (0.45, 0.95, 1, 1.95, 2, 4)] == [1, 1, 1, 2, 2, 4]


# ---------------------------------------------------------------- the teacher a sweep trains: --set and frozen mode
FROZEN_SCHEDULE = {"train": {"epochs": 7}, "optim": {"milestones": [2, 4]}}


def frozen_space(tmp_path, **teacher_keys):
    teacher = {"config": {"teacher": {"arch": "resnet14", "aux_stages": "all"}, "train": {"epochs": 3}},
               **teacher_keys}
    return write_space(tmp_path, teacher=teacher)


def test_set_teacher_config_keys_set_the_trained_teacher_and_leave_the_students_base(tmp_path):
    space = load_space(frozen_space(tmp_path), ["teacher.config.train.epochs=5", "optim.lr=0.02",
                                                "teacher.config.optim.weight_decay=0.001"])
    t = space.teacher_config
    assert (t.train.epochs, t.optim.weight_decay, t.optim.lr) == (5, 0.001, 0.02)  # base lr reaches the teacher too
    assert (space.base.train.epochs, space.base.optim.weight_decay, space.base.optim.lr) == (4, 5e-4, 0.02)


def test_a_frozen_teacher_trains_on_the_spaces_frozen_sections_and_a_joint_one_ignores_them(tmp_path):
    path = frozen_space(tmp_path, frozen=FROZEN_SCHEDULE)
    joint = load_space(path).teacher_config
    assert (joint.teacher.mode, joint.train.epochs, joint.optim.milestones) == ("joint", 3, [])
    frozen = load_space(path, ["teacher.config.teacher.mode=frozen", "teacher.config.teacher.pretrained=bb"])
    t = frozen.teacher_config
    assert (t.teacher.mode, t.teacher.pretrained, t.train.epochs, t.optim.milestones) == ("frozen", "bb", 7, [2, 4])
    assert frozen.base.train.epochs == 4  # the students' schedule is the base's
    mine = load_space(path, ["teacher.config.teacher.mode=frozen", "teacher.config.teacher.pretrained=bb",
                             "teacher.config.train.epochs=9"]).teacher_config
    assert (mine.train.epochs, mine.optim.milestones) == (9, [2, 4])  # --set wins over the frozen sections


@pytest.mark.parametrize("teacher_keys, sets, message", [
    ({}, ["teacher.config.teacher.mode=frozen"], "teacher.config.teacher.pretrained: a mode: frozen teacher"),
    ({"frozen": {"train": {"epocs": 100}}}, [], "train.epocs"),
    ({"frozen": {"train": 100}}, [], "teacher.frozen must map config sections"),
    ({}, ["teacher.config.train.epochs=oops"], "train.epochs"),
    ({}, ["teacher.config.train.epocs=3"], "^teacher: unknown config key 'train.epocs'"),
])
def test_bad_teacher_settings_are_refused_naming_the_key(tmp_path, teacher_keys, sets, message):
    with pytest.raises(ConfigError, match=message):
        load_space(frozen_space(tmp_path, **teacher_keys), sets)


def test_teacher_config_sets_and_frozen_sections_need_a_teacher_the_sweep_trains(tmp_path):
    path = write_space(tmp_path, teacher="runs:/abc/checkpoint")
    with pytest.raises(ConfigError, match="--set teacher.config.train.epochs: this space's teacher is a checkpoint"):
        load_space(path, ["teacher.config.train.epochs=5"])
    with pytest.raises(ConfigError, match="teacher must be"):
        load_space(write_space(tmp_path, teacher={"checkpoint": "x", "frozen": FROZEN_SCHEDULE}))
