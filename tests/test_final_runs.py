"""The sweep's final stage (tune.final): which runs it plans, how a resumed stage finds the finished ones, and the
results table (mean ± std over seeds, gain over ce, published figure) read back from real runs in a real sqlite
MLflow store, written to results.md and to the parent's description."""
from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from hsakd_ray.cli import build_parser
from hsakd_ray.config import ConfigError
from hsakd_ray.tracking import runs as R
from hsakd_ray.tune.final_runs import final_run_config, finished_run, planned_runs, started_before, write_results
from hsakd_ray.tune.published import PUBLISHED
from hsakd_ray.tune.report import FINAL_METHOD_TAG, FINAL_SEED_TAG, FINAL_TAG, NOTE_TAG
from hsakd_ray.tune.space import load_space

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "search_spaces"
CIFAR = SPACES / "cifar100_wrn40_2_wrn16_2.yaml"


def test_shipped_cifar_space_plans_three_seeds_of_the_tuned_method_then_ce_and_kd():
    space = load_space(CIFAR)
    planned = planned_runs(space)
    assert [(r.method, r.seed) for r in planned] == [(m, s) for m in ("hsakd", "ce", "kd") for s in (0, 1, 2)]
    assert len({r.name for r in planned}) == 9 and planned[0].name == "cifar100_wrn40_2_wrn16_2-final-hsakd-seed0"


def test_only_the_tuned_methods_first_seed_is_registered_and_baselines_use_the_base_config():
    space = load_space(CIFAR, ["tracking.register_model=wrn16_2-student"])
    best = {"distill.temperature": 4.5, "student.aux_stages": [2, 3]}
    configs = [final_run_config(space, best, "runs:/abc/checkpoint", r) for r in planned_runs(space)]
    assert [c.tracking.register_model for c in configs] == ["wrn16_2-student"] + [None] * 8
    tuned, ce, kd = configs[0], configs[3], configs[6]
    assert tuned.distill.temperature == 4.5 and tuned.data.val_fraction == 0.0 and tuned.train.seed == 0
    assert (ce.distill.method, kd.distill.method) == ("ce", "kd")
    assert kd.distill.temperature == space.base.distill.temperature and kd.teacher.checkpoint == "runs:/abc/checkpoint"
    assert {c.train.epochs for c in configs} == {240} and {c.student.arch for c in configs} == {"wrn_16_2"}
    assert configs[1].train.seed == 1 and configs[1].tracking.run_name.endswith("-final-hsakd-seed1")


def test_final_stage_defaults_and_the_shipped_choices():
    quick = load_space(SPACES / "quickstart.yaml").tune.final
    assert (quick.run, quick.seeds, quick.baselines) == (True, 1, ["ce"])
    pbt = load_space(SPACES / "pbt_digits.yaml").tune.final  # no final section: one seed, no baselines
    assert (pbt.run, pbt.seeds, pbt.baselines) == (True, 1, [])
    assert load_space(SPACES / "imagenet_resnet34_resnet18.yaml").tune.final.seeds == 3


@pytest.mark.parametrize("final, message", [
    ({"seeds": 0}, "tune.final.seeds must be an integer >= 1"),
    ({"baselines": ["ce", "mutual"]}, "tune.final.baselines must list distinct methods of ce, kd"),
    ({"run": "yes"}, "tune.final.run must be true or false"),
    ({"repeats": 2}, "unknown key tune.final.repeats"),
])
def test_bad_final_section_is_refused_in_one_line(tmp_path, final, message):
    raw = yaml.safe_load((SPACES / "quickstart.yaml").read_text())
    raw["tune"]["final"] = final
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_space(tmp_path / "space.yaml")


def test_no_final_flag():
    assert build_parser().parse_args(["tune", "s.yaml", "--no-final"]).no_final
    assert not build_parser().parse_args(["tune", "s.yaml"]).no_final


def test_published_figures_are_the_method_docs_table():
    """The package's figures (tune/published.py) are docs/method.md's, row by row, keyed by the shipped space."""
    rows = re.findall(r"^\| [^|]+ \| [\d.]+ \| ([\d.]+) \| ([\d.]+)[^|]*\| ([\d.]+) \| `(\w+)\.yaml` \|$",
                      (ROOT / "docs" / "method.md").read_text(), flags=re.M)
    assert len(rows) == len(PUBLISHED) == 9
    for student, hsakd, star, stem in rows:
        assert (PUBLISHED[stem].student, PUBLISHED[stem].hsakd, PUBLISHED[stem].hsakd_star) == \
               (float(student), float(hsakd), float(star))
        assert (SPACES / f"{stem}.yaml").is_file()


# ---------------------------------------------------------------- against a real store

FIGURES = {("hsakd", 0): (77.1, 77.9), ("hsakd", 1): (76.5, 77.2), ("hsakd", 2): (77.4, 78.3),
           ("ce", 0): (72.0, 73.1), ("ce", 1): (72.6, 73.0), ("ce", 2): (71.9, 72.5)}


@pytest.fixture
def store(tmp_path):
    """A parent with six finished final runs, one killed final run and one trial (neither counts)."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("finals", (tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, tags={R.NAME_TAG: "cifar100_wrn40_2_wrn16_2"}).info.run_id

    def child(name: str, status: str, tags: dict, metrics: dict) -> str:
        run_id = client.create_run(exp, tags={R.PARENT_TAG: parent, R.NAME_TAG: name, **tags}).info.run_id
        client.log_param(run_id, "train.epochs", 240)
        client.set_tag(run_id, "hsakd.precision", "bf16")
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        client.set_terminated(run_id, status)
        return run_id

    for (method, seed), (last, best) in FIGURES.items():
        child(f"x-final-{method}-seed{seed}", "FINISHED",
              {FINAL_TAG: "true", FINAL_METHOD_TAG: method, FINAL_SEED_TAG: str(seed)},
              {"test/top1_last": last, "test/top1_best_epoch": best})
    child("x-final-kd-seed0", "KILLED", {FINAL_TAG: "true", FINAL_METHOD_TAG: "kd", FINAL_SEED_TAG: "0"},
          {"test/top1_last": 10.0, "test/top1_best_epoch": 10.0})
    child("trial-1", "FINISHED", {}, {"val/top1": 50.0})
    return client, exp, parent, tmp_path


def cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def test_results_table_is_mean_and_std_of_the_finished_final_runs_beside_the_published_figure(store):
    client, _, parent, tmp_path = store
    markdown = write_results(load_space(CIFAR), client, parent, tmp_path / "results")
    assert (tmp_path / "results" / "results.md").read_text() == markdown
    assert client.get_run(parent).data.tags[NOTE_TAG] == markdown  # the parent's description in the UI
    assert "results.md" in {a.path for a in client.list_artifacts(parent)}
    rows = {line.split(" | ")[0].strip("| "): line for line in markdown.splitlines() if line.startswith("| ")}
    assert set(rows) == {"method", "hsakd", "ce"}  # the killed kd run and the trial are not final results
    last = {m: [FIGURES[m, s][0] for s in range(3)] for m in ("hsakd", "ce")}
    best = {m: [FIGURES[m, s][1] for s in range(3)] for m in ("hsakd", "ce")}
    gain = (f"{statistics.mean(last['hsakd']) - statistics.mean(last['ce']):+.2f} / "
            f"{statistics.mean(best['hsakd']) - statistics.mean(best['ce']):+.2f}")
    assert rows["hsakd"] == (f"| hsakd | 3 (0, 1, 2) | {cell(last['hsakd'])} | {cell(best['hsakd'])} | {gain} | bf16 | "
                             "240 | 78.67 (HSAKD*) |")
    assert rows["ce"] == (f"| ce | 3 (0, 1, 2) | {cell(last['ce'])} | {cell(best['ce'])} | — | bf16 | 240 | "
                          "73.57 (student alone) |")
    assert markdown.index("| hsakd |") < markdown.index("| ce |")


def test_a_resumed_stage_skips_finished_runs_and_continues_started_ones(store):
    client, exp, parent, tmp_path = store
    assert finished_run(client, exp, parent, "x-final-hsakd-seed1")
    assert finished_run(client, exp, parent, "x-final-kd-seed0") is None  # killed: run it again
    assert finished_run(client, exp, "another-parent", "x-final-hsakd-seed1") is None
    storage = tmp_path / "ray_results"
    assert not started_before(client, exp, parent, "x-final-kd-seed0", str(storage))  # nothing to continue from
    (storage / "x-final-kd-seed0").mkdir(parents=True)
    assert started_before(client, exp, parent, "x-final-kd-seed0", str(storage))
    assert not started_before(client, exp, parent, "x-final-kd-seed1", str(storage))
