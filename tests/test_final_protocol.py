"""The published protocol of the final run, without starting Ray: which checkpoint a job keeps (never chosen by
test accuracy; a frozen teacher by its best validation head self-supervised accuracy), the last and best-epoch
top-1 it reports, and the final run's teacher (trained on the whole training set, reused, or given)."""
from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient
from ray.train import Checkpoint, Result

from hsakd_ray.config import ConfigError, apply_overrides, config_from_dict, config_to_dict, dump_config
from hsakd_ray.data import eval_split
from hsakd_ray.engine import Runtime, read_meta, run_job, write_checkpoint
from hsakd_ray.engine.reporting import LocalReporter
from hsakd_ray.engine.selection import kept_metric, top1_summary
from hsakd_ray.models import build_model
from hsakd_ray.tracking import runs as R
from hsakd_ray.train.fit import kept_checkpoint, log_top1_summary
from hsakd_ray.train.trainer import checkpoint_config
from hsakd_ray.tune.experiment import final_teacher_for
from hsakd_ray.tune.final import FINAL_TEACHER_TAG, final_teacher_config, final_teacher_name, prepare_final_teacher
from hsakd_ray.tune.space import final_config, load_space

torch.set_num_threads(1)

DIGITS = {"data": {"name": "digits", "image_size": 16},
          "teacher": {"arch": "resnet8", "aux_stages": "all"}, "student": {"arch": "resnet8"},
          "optim": {"schedule": "constant", "milestones": []},
          "train": {"epochs": 4, "batch_size": 128, "device": "cpu"}}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, MlflowClient]:
    """One sqlite store for the module (creating one takes seconds); each test uses its own experiment."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    return uri, MlflowClient(uri)


def experiment(client: MlflowClient, request) -> str:
    return R.get_experiment_id(client, request.node.name)


def digits(*overrides: str):
    return config_from_dict(apply_overrides(DIGITS, list(overrides)))


def run_keeping_every_epoch(cfg, kind: str, run_dir: Path) -> LocalReporter:
    """run_job with the reporter the CLI's --local path builds, plus a copy of every epoch's weights."""
    reporter = LocalReporter(run_dir, cfg.train.epochs, keep_by=kept_metric(cfg, kind), split=eval_split(cfg.data),
                             printer=lambda line: None)

    def report(epoch: int, metrics: dict, save) -> None:
        save(run_dir / f"epoch{epoch}")
        reporter(epoch, metrics, save)

    run_job(cfg, kind, Runtime(report=report))
    return reporter


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "model.pt", weights_only=True)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- the kept checkpoint and the reported top-1

def test_on_the_test_split_the_kept_checkpoint_is_the_last_epoch_not_the_best_test_epoch(tmp_path):
    cfg = digits("distill.method=ce", "optim.lr=0.1")  # val_fraction 0: the final run's setting
    assert kept_metric(cfg, "distill") is None and checkpoint_config(cfg, "distill").checkpoint_score_attribute is None
    reporter = run_keeping_every_epoch(cfg, "distill", tmp_path)
    history = reporter.history
    best = max(history, key=history.get)
    assert sorted(history) == [1, 2, 3, 4] and best != 4, history  # the case this test is about
    assert reporter.kept == tmp_path / "latest" and not (tmp_path / "best").exists()
    assert same(weights(reporter.kept), weights(tmp_path / "epoch4"))
    assert not same(weights(reporter.kept), weights(tmp_path / f"epoch{best}"))
    assert read_meta(reporter.kept)["epoch"] == 4
    # what the paper reports: the last epoch's and the best epoch's test top-1, named as such
    assert reporter.summary() == {"test/top1_last": history[4], "test/top1_best_epoch": history[best],
                                  "test/top1_best_epoch_num": float(best)}


def test_frozen_teacher_keeps_the_epoch_of_best_validation_head_ssl_accuracy(tmp_path):
    torch.manual_seed(1)
    backbone = tmp_path / "backbone.pt"
    torch.save(build_model("resnet8", 10, []).backbone.state_dict(), backbone)
    cfg = digits("data.val_fraction=0.2", "teacher.mode=frozen", f"teacher.pretrained={backbone}", "optim.lr=0.2")
    metric = "val/best_head_ssl_acc"
    assert kept_metric(cfg, "teacher") == metric
    assert checkpoint_config(cfg, "teacher").checkpoint_score_attribute == metric
    ssl: dict[int, float] = {}
    top1: dict[int, float] = {}
    reporter = run_keeping_every_epoch(cfg, "teacher", tmp_path / "run")
    for epoch in range(1, 5):
        metrics = read_meta(tmp_path / "run" / f"epoch{epoch}")["metrics"]
        ssl[epoch], top1[epoch] = metrics[metric], metrics["val/top1"]
        assert ssl[epoch] == max(v for k, v in metrics.items() if k.startswith("val/head_") and "ssl" in k)
    best = max(ssl, key=ssl.get)
    assert len(set(top1.values())) == 1  # a frozen backbone's top-1 cannot choose an epoch
    assert best not in (1, 4), ssl  # neither the first (ties of top-1) nor the last epoch
    assert reporter.kept == tmp_path / "run" / "best" and read_meta(reporter.kept)["epoch"] == best
    assert same(weights(reporter.kept), weights(tmp_path / "run" / f"epoch{best}"))


def test_which_metric_keeps_a_checkpoint():
    assert kept_metric(digits(), "teacher") is None  # test split
    assert kept_metric(digits("data.val_fraction=0.1"), "teacher") is None  # joint teacher: its last epoch
    assert kept_metric(digits("data.val_fraction=0.1"), "distill") == "val/top1"
    assert kept_metric(digits("data.val_fraction=0.1"), "probe") == "val/top1"
    assert kept_metric(digits("teacher.mode=frozen", "teacher.pretrained=x"), "teacher") is None  # test split


def test_ray_job_keeps_the_latest_checkpoint_unless_a_validation_metric_ranks_them(tmp_path):
    """``kept_checkpoint`` on a real Train Result: epoch 1 scored higher than the last epoch."""
    paths = {e: tmp_path / f"e{e}" for e in (1, 2)}
    for p in paths.values():
        p.mkdir()
    history = [({"test/top1": 80.0, "val/top1": 80.0, "epoch": 1}), ({"test/top1": 60.0, "val/top1": 60.0, "epoch": 2})]
    result = Result(metrics=history[1], checkpoint=Checkpoint(str(paths[2])), error=None, path=str(tmp_path),
                    best_checkpoints=[(Checkpoint(str(paths[e])), m) for e, m in zip((1, 2), history)])
    assert kept_checkpoint(result, None) == (str(paths[2]), 2)
    assert kept_checkpoint(result, "val/top1") == (str(paths[1]), 1)


def test_top1_summary_is_logged_from_the_runs_history(store, request):
    _, client = store
    run_id = client.create_run(experiment(client, request)).info.run_id
    history = {1: 40.0, 2: 75.5, 3: 75.5, 4: 70.25}
    for epoch, value in history.items():
        client.log_metric(run_id, "test/top1", value, step=epoch)
    assert log_top1_summary(client, run_id, "test") == top1_summary(history, "test")
    logged = client.get_run(run_id).data.metrics
    assert logged["test/top1_last"] == 70.25 and logged["test/top1_best_epoch"] == 75.5
    assert logged["test/top1_best_epoch_num"] == 2  # ties: the earliest epoch
    assert top1_summary({}, "test") == {}


# ---------------------------------------------------------------- the final run's teacher

SPACE = {
    "base": {"data": {"name": "digits", "image_size": 16, "val_fraction": 0.1},
             "teacher": {"arch": "resnet8"}, "student": {"arch": "resnet8", "aux_stages": [1, 2, 3]},
             "train": {"epochs": 2}, "tracking": {"experiment": "final"}},
    "teacher": {"config": {"teacher": {"arch": "resnet8", "aux_stages": "all"}, "train": {"epochs": 1}}},
    "search": {"distill.temperature": {"choice": [2.0, 4.0]}},
    "tune": {"name": "fin"},
}


def write_space(tmp_path: Path, teacher=None, **base) -> Path:
    raw = yaml.safe_load(yaml.safe_dump(SPACE))
    raw["base"]["train"]["output_dir"] = str(tmp_path / "outputs")
    raw["base"]["ray"] = {"storage_path": str(tmp_path / "ray_results")}
    if teacher is not None:
        raw["teacher"] = teacher
    for section, values in base.items():
        raw["base"].setdefault(section, {}).update(values)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def teacher_checkpoint(path: Path, aux_stages="all") -> Path:
    net = build_model("resnet8", 10, aux_stages)
    meta = {"kind": "teacher", "arch": "resnet8", "num_classes": 10, "aux_stages": list(net.aux_stages),
            "epoch": 1, "metrics": {}, "dataset": "digits"}
    return write_checkpoint(path, model_state=net.state_dict(), meta=meta, config_yaml=dump_config(digits()))


def finished_teacher_run(client: MlflowClient, experiment_id: str, name: str, tmp_path: Path, **kw) -> str:
    run_id = R.start_run(client, experiment_id, name, R.base_tags("teacher", name))
    client.log_artifacts(run_id, str(teacher_checkpoint(tmp_path / name, **kw)), artifact_path="checkpoint")
    R.finish_run(client, run_id, "FINISHED")
    return run_id


def test_final_teacher_config_is_the_tuning_teacher_on_the_whole_training_set(tmp_path):
    space = load_space(write_space(tmp_path))
    final = config_to_dict(final_teacher_config(space))
    tuning = config_to_dict(space.teacher_config)
    assert tuning["data"]["val_fraction"] == 0.1 and final["data"]["val_fraction"] == 0.0
    assert final["tracking"]["run_name"] == final_teacher_name(space) == "fin-final-teacher"
    for raw in (final, tuning):
        raw["data"].pop("val_fraction"), raw["tracking"].pop("run_name")
    assert final == tuning  # same teacher config otherwise


def test_a_finished_final_teacher_run_is_reused_without_training(tmp_path, store, request):
    uri, client = store
    experiment_id = experiment(client, request)
    space = load_space(write_space(tmp_path))
    # a same-named run that did not finish, and the tuning teacher, are not the final teacher
    R.finish_run(client, R.start_run(client, experiment_id, "fin-final-teacher", {R.NAME_TAG: "fin-final-teacher"}),
                 "KILLED")
    finished_teacher_run(client, experiment_id, "fin-teacher", tmp_path)
    run_id = finished_teacher_run(client, experiment_id, "fin-final-teacher", tmp_path)
    for _ in range(2):  # a second call (--resume) finds the same run
        ref = prepare_final_teacher(space, uri, client, experiment_id, "runs:/tuning/checkpoint")
        assert ref == f"runs:/{run_id}/checkpoint"
    assert not ray.is_initialized()  # nothing was trained


def test_a_given_teacher_reference_is_the_final_runs_teacher_unchanged(tmp_path, store, request):
    given = str(teacher_checkpoint(tmp_path / "given"))
    space = load_space(write_space(tmp_path, teacher=given))
    uri, client = store
    assert prepare_final_teacher(space, uri, client, experiment(client, request), given) == given
    best = final_config(space, {"distill.temperature": 2.0}, given)
    assert best["teacher"]["checkpoint"] == given and best["data"]["val_fraction"] == 0.0


def test_a_space_may_give_the_final_teacher_as_a_checkpoint(tmp_path, store, request):
    final = str(teacher_checkpoint(tmp_path / "final"))
    raw = {"config": SPACE["teacher"]["config"], "final_checkpoint": final}
    space = load_space(write_space(tmp_path, teacher=raw))
    uri, client = store
    assert prepare_final_teacher(space, uri, client, experiment(client, request), "runs:/x/checkpoint") == final
    with pytest.raises(ConfigError, match="final_checkpoint must be a checkpoint reference"):
        load_space(write_space(tmp_path, teacher={"config": SPACE["teacher"]["config"], "final_checkpoint": 3}))


def test_best_config_names_the_final_teacher_tagged_on_the_parent(tmp_path, store, request):
    _, client = store
    experiment_id = experiment(client, request)
    space = load_space(write_space(tmp_path))
    run_id = finished_teacher_run(client, experiment_id, "fin-final-teacher", tmp_path)
    parent = R.start_run(client, experiment_id, "fin", R.base_tags("tune", "fin"))
    ref = final_teacher_for(space, client, parent, "runs:/tuning/checkpoint", {"distill.temperature": 4.0},
                            tmp_path / "exp")
    assert ref == f"runs:/{run_id}/checkpoint" == client.get_run(parent).data.tags[FINAL_TEACHER_TAG]
    best = final_config(space, {"distill.temperature": 4.0}, ref)
    assert best["teacher"]["checkpoint"] == ref and best["data"]["val_fraction"] == 0.0
    assert best["distill"]["temperature"] == 4.0


def test_a_final_teacher_without_the_winners_heads_fails_the_parent_in_one_line(tmp_path, store, request):
    _, client = store
    experiment_id = experiment(client, request)
    space = load_space(write_space(tmp_path))
    finished_teacher_run(client, experiment_id, "fin-final-teacher", tmp_path, aux_stages=[3])
    name = client.get_experiment(experiment_id).name
    with pytest.raises(ConfigError, match=r"needs teacher heads at stages \[1, 2\]"):
        with R.tracked_run(client, name, "fin", R.base_tags("tune", "fin")) as parent:  # as run_experiment does
            final_teacher_for(space, client, parent.run_id, None, {"distill.temperature": 4.0}, tmp_path / "exp")
    assert client.get_run(parent.run_id).info.status == "FAILED"


# ---------------------------------------------------------------- a given tuning teacher that saw the validation split
def test_a_given_teacher_is_flagged_unless_it_trained_on_the_sweeps_tuning_split(tmp_path):
    from hsakd_ray.tune.experiment import saw_validation

    base = load_space(write_space(tmp_path)).base  # digits, val_fraction 0.1, split_seed 0
    whole = teacher_checkpoint(tmp_path / "whole")  # trained with val_fraction 0: the whole training set
    assert "data.val_fraction 0.0" in saw_validation(base, str(whole))  # a str, as resolve_checkpoint gives
    cfg = digits("data.val_fraction=0.1", "data.split_seed=3")
    other = write_checkpoint(tmp_path / "other", model_state={}, meta=read_meta(whole), config_yaml=dump_config(cfg))
    assert "data.split_seed 3" in saw_validation(base, other)
    same = write_checkpoint(tmp_path / "same", model_state={}, meta=read_meta(whole),
                            config_yaml=dump_config(digits("data.val_fraction=0.1")))
    assert saw_validation(base, same) is None
    (same / "config.yaml").write_text("data: {name: digits, val_fraction: 0.1, sampler: old}\n")  # another version's
    assert "config.yaml does not say which split it trained on" in saw_validation(base, same)


def test_an_imported_released_teacher_is_flagged_in_the_console_and_returned(tmp_path, store, request, capsys):
    """The reference's released teachers trained on the whole training set: a sweep tuning on them is warned."""
    import torchvision

    from hsakd_ray.engine.importers import import_checkpoint
    from hsakd_ray.tune.experiment import tuning_teacher

    released = tmp_path / "resnet18-released.pth"  # a torchvision-format file, as torchvision releases it
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), released)
    imported = tmp_path / "imported"
    import_checkpoint(released, "resnet18_imagenet", imported)
    path = write_space(tmp_path, teacher=str(imported), distill={"method": "kd"})
    raw = yaml.safe_load(path.read_text())
    raw["base"]["teacher"]["arch"] = "resnet18_imagenet"
    path.write_text(yaml.safe_dump(raw))
    space = load_space(path)
    uri, client = store
    ref, files, seen = tuning_teacher(space, uri, client, experiment(client, request), resume=False)
    assert ref == str(imported) and files and "imported released checkpoint (resnet18-released.pth)" in seen
    out = capsys.readouterr().out
    assert f"warning: the tuning teacher {imported} may have seen the validation split" in out
