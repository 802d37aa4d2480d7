"""The single-process engine: what each task trains, that training learns, checkpoints, schedules and resuming."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hsakd_ray.config import Config, OptimConfig, apply_overrides, config_from_dict, dump_config, load_config
from hsakd_ray.data import as_tensors, build_datasets
from hsakd_ray.engine import (
    CheckpointError,
    Runtime,
    build_task,
    load_network,
    load_train_state,
    read_meta,
    run_job,
    write_checkpoint,
)
from hsakd_ray.engine.loop import train_epoch
from hsakd_ray.engine.optim import build_lr_scheduler, build_optimizer, lr_factor
from hsakd_ray.engine.reporting import LocalReporter, format_epoch
from hsakd_ray.engine.runner import rng_state, set_rng_state
from hsakd_ray.models import build_model

torch.set_num_threads(1)  # tiny convs: a second thread only adds synchronisation on a shared 2-core machine

CLASSES = 4
TINY = {
    "data": {"name": "synthetic", "image_size": 16, "synthetic_train_size": 64, "synthetic_test_size": 32,
             "synthetic_classes": CLASSES},
    "teacher": {"arch": "resnet8"},
    "student": {"arch": "resnet8"},
    "optim": {"schedule": "constant", "milestones": []},
    "train": {"epochs": 1, "batch_size": 16, "device": "cpu"},
}


def tiny(*overrides: str) -> Config:
    """A tiny synthetic job (64 images of 16 px, 4 classes, resnet8), with ``section.key=value`` overrides."""
    return config_from_dict(apply_overrides(TINY, list(overrides)))


def batches(cfg: Config, n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` training batches of the config's data, in a fixed order."""
    data = build_datasets(cfg.data)
    loader = torch.utils.data.DataLoader(data.train, batch_size=cfg.train.batch_size, shuffle=False)
    return list(itertools.islice(loader, n))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (BN running statistics included), copied."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


def train_task(task, cfg: Config, n_batches: int = 2) -> torch.optim.Optimizer:
    params = itertools.chain.from_iterable(m.parameters() for m in task.trainable_modules())
    optimizer = build_optimizer(params, cfg.optim)
    train_epoch(task, optimizer, batches(cfg, n_batches), torch.device("cpu"))
    return optimizer


def quiet_reporter(run_dir: Path, cfg: Config) -> LocalReporter:
    return LocalReporter(run_dir, cfg.train.epochs, cfg.train.checkpoint_every, printer=lambda line: None)


def train_and_save(cfg: Config, kind: str, run_dir: Path) -> dict:
    return run_job(cfg, kind, Runtime(report=quiet_reporter(run_dir, cfg)))


def save_network(net, path: Path, kind: str = "teacher") -> Path:
    meta = {"kind": kind, "arch": net.arch, "num_classes": net.num_classes, "aux_stages": list(net.aux_stages),
            "epoch": 0, "metrics": {}, "dataset": "synthetic"}
    return write_checkpoint(path, model_state=net.state_dict(), meta=meta, config_yaml=dump_config(tiny()))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A resnet8 teacher with heads after every stage, trained one epoch on the tiny synthetic set by run_job."""
    run_dir = tmp_path_factory.mktemp("teacher")
    train_and_save(tiny(), "teacher", run_dir)
    return run_dir / "latest"


# ---------------------------------------------------------------- teacher: frozen and joint modes

@pytest.fixture()
def pretrained_file(tmp_path) -> Path:
    torch.manual_seed(1)
    path = tmp_path / "backbone.pt"
    torch.save(build_model("resnet8", CLASSES, []).backbone.state_dict(), path)
    return path


def test_frozen_teacher_changes_heads_and_leaves_every_backbone_tensor(pretrained_file):
    cfg = tiny("teacher.mode=frozen", f"teacher.pretrained={pretrained_file}")
    task = build_task("teacher", cfg, CLASSES)
    net = task.network
    backbone_before, heads_before = snapshot(net.backbone), snapshot(net.heads)
    optimizer = train_task(task, cfg)
    assert changed(backbone_before, net.backbone) == set()  # weights, classifier and BN running statistics
    for key, value in torch.load(pretrained_file, weights_only=True).items():
        assert torch.equal(net.backbone.state_dict()[key], value)
    moved = changed(heads_before, net.heads)
    for i in range(len(net.heads)):
        assert f"{i}.fc.weight" in moved and any(k.startswith(f"{i}.blocks.") and "running_mean" in k for k in moved)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in net.backbone.parameters()}


def test_pretrained_weights_of_another_arch_are_a_one_line_error(tmp_path):
    path = tmp_path / "resnet14.pt"
    torch.save(build_model("resnet14", CLASSES, []).backbone.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"teacher.pretrained .* \(resnet8 backbone\) does not fit") as info:
        build_task("teacher", tiny("teacher.mode=frozen", f"teacher.pretrained={path}"), CLASSES)
    assert "unexpected" in str(info.value) and "\n" not in str(info.value)


def test_joint_teacher_changes_the_backbone():
    cfg = tiny()
    task = build_task("teacher", cfg, CLASSES)
    backbone_before = snapshot(task.network.backbone)
    train_task(task, cfg)
    moved = changed(backbone_before, task.network.backbone)
    assert any(k.endswith("conv1.weight") for k in moved)
    assert any(k.endswith("running_mean") for k in moved)


def test_frozen_mode_needs_pretrained_weights():
    with pytest.raises(ValueError, match="teacher.pretrained"):
        build_task("teacher", tiny("teacher.mode=frozen"), CLASSES)


def test_teacher_learns_digits(tmp_path):
    """Two epochs of a resnet8 at 16 px reach well above the 10 % chance level (measured: 86.6 % top-1, and
    60.5 % joint accuracy of the last head, whose chance level is 2.5 %)."""
    cfg = load_config(None, ["data.name=digits", "data.image_size=16", "teacher.arch=resnet8",
                             "teacher.aux_stages=[3]", "optim.schedule=cosine", "optim.milestones=[]",
                             "train.epochs=2", "train.batch_size=32", "train.device=cpu"])
    metrics = run_job(cfg, "teacher")
    assert metrics["test/top1"] > 60.0
    assert metrics["test/head_0_ssl_acc"] > 20.0


# ---------------------------------------------------------------- distillation methods and probe

EXPECTED_PARTS = {
    "hsakd": {"ce", "kl_head_0", "kl_head_1", "kl_head_2", "kl_final", "loss"},
    "kd": {"ce", "kl_final", "loss"},
    "ce": {"ce", "loss"},
    "mutual": {"loss"} | {f"{who}_{part}" for who in ("student", "peer") for part in
                          ("ce", "aux_ce_0", "aux_ce_1", "aux_ce_2", "kl_head_0", "kl_head_1", "kl_head_2",
                           "kl_final", "loss")},
}


def evaluate_top1(net: torch.nn.Module, cfg: Config) -> float:
    """Top-1 (%) of ``net`` on the config's eval split, counted here with plain argmax."""
    data = build_datasets(cfg.data)
    images, labels = as_tensors(data.eval)
    with torch.no_grad():
        logits, _ = net.eval()(images)
    return 100.0 * float((logits.argmax(1) == labels).float().mean())


@pytest.mark.parametrize("method", sorted(EXPECTED_PARTS))
def test_distill_method_runs_an_epoch_with_finite_named_losses(method, teacher_dir, tmp_path):
    # fp32: the recount below runs in fp32, and a bf16 evaluation (precision auto on a bf16 CPU) may flip an image
    cfg = tiny(f"distill.method={method}", f"teacher.checkpoint={teacher_dir}", "train.precision=fp32")
    metrics = train_and_save(cfg, "distill", tmp_path / "run")
    parts = {k.removeprefix("train/"): v for k, v in metrics.items() if k.startswith("train/")}
    assert set(parts) == EXPECTED_PARTS[method]
    assert all(math.isfinite(v) for v in parts.values())
    # the reported accuracy is the saved network's accuracy on the eval split, counted again here
    student = load_network(tmp_path / "run" / "latest", role="checkpoint")
    assert metrics["test/top1"] == pytest.approx(evaluate_top1(student, cfg))
    if method == "mutual":
        peer = torch.load(tmp_path / "run" / "latest" / "peer.pt", weights_only=True)
        student.load_state_dict(peer)
        assert metrics["peer_test/top1"] == pytest.approx(evaluate_top1(student, cfg))


def test_hsakd_student_pairs_with_the_teacher_heads_at_its_stages(teacher_dir):
    cfg = tiny(f"teacher.checkpoint={teacher_dir}", "student.aux_stages=[2, 3]")
    task = build_task("distill", cfg, CLASSES)
    assert task.network.aux_stages == (2, 3) and task.teacher.aux_stages == (2, 3)
    assert not task.teacher.training and not any(p.requires_grad for p in task.teacher.parameters())
    parts = task.step(*batches(cfg, 1)[0], torch.optim.SGD(task.network.parameters(), lr=0.1))
    assert {k for k in parts if k.startswith("kl_head_")} == {"kl_head_0", "kl_head_1"}


def test_kd_and_ce_students_carry_no_heads(teacher_dir):
    for method in ("kd", "ce"):
        task = build_task("distill", tiny(f"distill.method={method}", f"teacher.checkpoint={teacher_dir}"), CLASSES)
        assert task.network.aux_stages == ()


def test_distilling_without_a_teacher_checkpoint_is_refused():
    with pytest.raises(ValueError, match="needs teacher.checkpoint"):
        build_task("distill", tiny(), CLASSES)


def test_distilling_from_a_teacher_of_other_classes_is_refused(teacher_dir):
    with pytest.raises(ValueError, match=f"has {CLASSES} classes, the data has 7"):
        build_task("distill", tiny(f"teacher.checkpoint={teacher_dir}"), 7)


def test_probe_trains_only_the_classifier(teacher_dir):
    cfg = tiny(f"student.checkpoint={teacher_dir}")
    task = build_task("probe", cfg, CLASSES)
    net = task.network
    assert net.aux_stages == ()
    before = snapshot(net)
    optimizer = train_task(task, cfg)
    classifier = {n for n, p in net.named_parameters() if p.requires_grad}
    assert len(classifier) == 2 and all(n.endswith(("weight", "bias")) for n in classifier)
    assert changed(before, net) == classifier  # no backbone weight, no BN statistic moved
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 2


def test_probe_job_runs_end_to_end(teacher_dir):
    metrics = run_job(tiny(f"student.checkpoint={teacher_dir}"), "probe")
    assert set(k for k in metrics if k.startswith("train/")) == {"train/ce", "train/loss"}
    assert math.isfinite(metrics["train/loss"])


def test_probe_without_a_checkpoint_is_refused():
    with pytest.raises(ValueError, match="student.checkpoint"):
        build_task("probe", tiny(), CLASSES)


# ---------------------------------------------------------------- checkpoints

def test_run_writes_a_complete_checkpoint_directory(teacher_dir):
    assert {p.name for p in teacher_dir.iterdir()} == {"model.pt", "meta.json", "config.yaml", "train_state.pt"}
    meta = read_meta(teacher_dir)
    assert (meta["kind"], meta["arch"], meta["num_classes"], meta["aux_stages"]) == ("teacher", "resnet8", 4, [1, 2, 3])
    assert meta["epoch"] == 1 and meta["dataset"] == "synthetic" and "test/top1" in meta["metrics"]
    assert load_config(teacher_dir / "config.yaml") == tiny()


def test_checkpoint_write_replaces_the_directory_whole(tmp_path):
    net = build_model("resnet8", CLASSES, [3])
    meta = {"arch": "resnet8", "num_classes": CLASSES, "aux_stages": [3]}
    path = tmp_path / "ckpt"
    write_checkpoint(path, model_state=net.state_dict(), meta={**meta, "epoch": 1}, config_yaml="a: 1\n",
                     train_state={"epoch": 1}, extra={"peer": net.state_dict()})
    (path / "stray.txt").write_text("left by hand")
    write_checkpoint(path, model_state=net.state_dict(), meta={**meta, "epoch": 2}, config_yaml="a: 2\n")
    assert {p.name for p in path.iterdir()} == {"model.pt", "meta.json", "config.yaml"}
    assert read_meta(path)["epoch"] == 2 and (path / "config.yaml").read_text() == "a: 2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary or old directories left


def _unpicklable_state() -> dict:
    return {"weight": torch.zeros(1), "bad": lambda: None}


def test_failed_checkpoint_write_keeps_the_previous_one_and_leaves_no_debris(tmp_path):
    path = tmp_path / "ckpt"
    write_checkpoint(path, model_state={"w": torch.ones(1)}, meta={"epoch": 1}, config_yaml="a: 1\n")
    with pytest.raises(Exception):  # noqa: B017 -- whatever pickling raises
        write_checkpoint(path, model_state=_unpicklable_state(), meta={"epoch": 2}, config_yaml="a: 2\n")
    assert read_meta(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    UNPICKLED.append("code ran")
    return "payload"


class _CodeOnLoad:
    def __reduce__(self):
        return (_record_unpickling, ())


def test_loading_uses_weights_only_and_refuses_pickled_code(tmp_path):
    net = build_model("resnet8", CLASSES, [])
    path = save_network(net, tmp_path / "ckpt")
    torch.save({**net.state_dict(), "payload": _CodeOnLoad()}, path / "model.pt")
    with pytest.raises(CheckpointError, match="weights_only=True") as info:
        load_network(path, "resnet8", [])
    assert UNPICKLED == [] and "\n" not in str(info.value)


def test_corrupt_weights_file_is_a_one_line_error(tmp_path):
    path = save_network(build_model("resnet8", CLASSES, []), tmp_path / "ckpt")
    (path / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError) as info:
        load_network(path)
    assert "model.pt" in str(info.value) and "\n" not in str(info.value)


def test_weights_that_do_not_fit_the_stored_arch_are_a_one_line_error(tmp_path):
    path = save_network(build_model("resnet8", CLASSES, []), tmp_path / "ckpt")
    torch.save(build_model("resnet8", CLASSES + 1, []).state_dict(), path / "model.pt")
    with pytest.raises(CheckpointError, match="does not fit HSAKDNet: keys 2 of another shape") as info:
        load_network(path)
    assert "\n" not in str(info.value)


def test_a_directory_without_meta_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not an hsakd-ray checkpoint directory"):
        load_network(tmp_path)


def test_checkpoint_of_another_arch_is_refused(teacher_dir):
    with pytest.raises(CheckpointError, match="holds 'resnet8', but teacher.arch is 'resnet14'"):
        load_network(teacher_dir, "resnet14")


def test_student_placement_not_in_teacher_heads_is_refused(tmp_path):
    teacher = save_network(build_model("resnet8", CLASSES, [2, 3]), tmp_path / "teacher")
    with pytest.raises(CheckpointError, match=r"heads at stages \[2, 3\]; stages \[1\] were asked for.*subset"):
        load_network(teacher, "resnet8", [1, 2])
    cfg = tiny(f"teacher.checkpoint={teacher}", "student.aux_stages=all")
    with pytest.raises(CheckpointError, match="must be a subset of the teacher's heads"):
        build_task("distill", cfg, CLASSES)


def test_head_remapping_loads_the_heads_of_the_requested_stages(tmp_path):
    torch.manual_seed(0)
    full = build_model("resnet8", CLASSES, [1, 2, 3]).eval()
    path = save_network(full, tmp_path / "ckpt")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        logits, aux = full(x)
        sub = load_network(path, "resnet8", [3, 2]).eval()
        sub_logits, sub_aux = sub(x)
    assert sub.aux_stages == (2, 3)
    assert torch.equal(sub_logits, logits)
    assert torch.equal(sub_aux[0], aux[1]) and torch.equal(sub_aux[1], aux[2])
    assert load_network(path, aux_stages="all").aux_stages == (1, 2, 3)
    assert load_network(path).aux_stages == (1, 2, 3)
    assert load_network(path, aux_stages=[]).aux_stages == ()


def test_train_state_loads_with_weights_only_and_restores_the_rngs(tmp_path):
    np.random.seed(3)
    torch.manual_seed(3)
    state = rng_state()
    expected = (np.random.rand(), torch.rand(1))
    write_checkpoint(tmp_path / "ckpt", model_state={}, meta={}, config_yaml="", train_state={"rng": state})
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_train_state(tmp_path / "ckpt")["rng"])
    assert (np.random.rand(), torch.rand(1)) == expected
    assert load_train_state(tmp_path) is None


def test_a_checkpoint_stores_the_weights_once_and_old_checkpoints_still_resume(tmp_path):
    cfg = tiny("train.epochs=1", "distill.method=mutual")
    train_and_save(cfg, "distill", tmp_path / "run")
    latest = tmp_path / "run" / "latest"
    raw = torch.load(latest / "train_state.pt", weights_only=True)
    assert "models" not in raw and raw["model_files"] == ["model", "peer"]
    state = load_train_state(latest)
    for name in ("model", "peer"):
        on_disk = torch.load(latest / f"{name}.pt", weights_only=True)
        assert state["models"][name].keys() == on_disk.keys()
        assert all(torch.equal(state["models"][name][k], v) for k, v in on_disk.items())
    # an earlier version's checkpoint: the weights inside train_state.pt as well; they are the ones resumed from
    old = dict(raw, models={"model": {"marker": torch.ones(1)}})
    del old["model_files"]
    torch.save(old, latest / "train_state.pt")
    assert torch.equal(load_train_state(latest)["models"]["model"]["marker"], torch.ones(1))


# ---------------------------------------------------------------- learning-rate schedules

def factors(cfg: OptimConfig, epochs: int) -> list[float]:
    return [lr_factor(e, cfg, epochs) for e in range(epochs)]


def test_multistep_schedule():
    cfg = OptimConfig(schedule="multistep", milestones=[2, 4], gamma=0.1)
    assert factors(cfg, 6) == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_schedule():
    expected = [0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert factors(OptimConfig(schedule="cosine"), 4) == pytest.approx(expected)
    assert expected[:3] == pytest.approx([1.0, 0.8535534, 0.5])


def test_warmup_then_cosine():
    cfg = OptimConfig(schedule="cosine", warmup_epochs=2)
    assert factors(cfg, 6) == pytest.approx([0.5, 1.0, 1.0, 0.8535534, 0.5, 0.1464466])


def test_warmup_then_multistep_and_constant():
    assert factors(OptimConfig(schedule="multistep", milestones=[3], warmup_epochs=2), 4) == pytest.approx(
        [0.5, 1.0, 1.0, 0.1])
    assert factors(OptimConfig(schedule="constant"), 3) == [1.0, 1.0, 1.0]


def test_scheduler_sets_the_optimizer_lr_each_epoch():
    cfg = OptimConfig(lr=0.2, schedule="multistep", milestones=[1, 2], gamma=0.5, warmup_epochs=0)
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    scheduler = build_lr_scheduler(optimizer, cfg, 3)
    lrs = []
    for _ in range(3):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.2, 0.1, 0.05])


def test_optimizer_is_nesterov_sgd_with_the_configured_values():
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(lr=0.1, weight_decay=1e-4))
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.1, 0.9, True, 1e-4)
    plain = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(momentum=0.0))
    assert plain.param_groups[0]["nesterov"] is False  # torch refuses Nesterov without momentum


def test_run_reports_the_scheduled_lr_per_epoch_with_warmup(tmp_path):
    """Two warm-up epochs ramp the lr (0.05, then 0.1), then the multistep schedule divides it by 10 at epoch 3."""
    cfg = tiny("train.epochs=4", "optim.schedule=multistep", "optim.milestones=[3]", "optim.lr=0.1",
               "optim.warmup_epochs=2", "data.synthetic_train_size=16", "data.synthetic_test_size=8",
               "student.aux_stages=[]", "distill.method=ce")
    seen: list[float] = []
    run_job(cfg, "distill", Runtime(report=lambda epoch, metrics, save: seen.append(metrics["lr"])))
    assert seen == pytest.approx([0.05, 0.1, 0.1, 0.01])


# ---------------------------------------------------------------- resuming

class Interrupted(Exception):
    pass


@pytest.mark.parametrize("kind,extra", [("teacher", []), ("distill", ["distill.method=mutual"])])
def test_resuming_from_train_state_reproduces_the_uninterrupted_run(tmp_path, kind, extra):
    cfg = tiny("train.epochs=3", "optim.schedule=cosine", "optim.warmup_epochs=1", *extra)
    train_and_save(cfg, kind, tmp_path / "whole")

    first = quiet_reporter(tmp_path / "cut", cfg)

    def stop_after_first_epoch(epoch, metrics, save):
        first(epoch, metrics, save)
        raise Interrupted

    with pytest.raises(Interrupted):
        run_job(cfg, kind, Runtime(report=stop_after_first_epoch))
    state = load_train_state(tmp_path / "cut" / "latest")
    assert state["epoch"] == 1
    second, reported = quiet_reporter(tmp_path / "cut", cfg), []

    def record(epoch, metrics, save):
        reported.append(epoch)
        second(epoch, metrics, save)

    resumed = run_job(cfg, kind, Runtime(report=record, resume_state=state))
    assert reported == [2, 3]  # only the epochs after the checkpoint: nothing retrained from scratch
    assert resumed["epoch"] == 3
    for name in ["model.pt"] + (["peer.pt"] if kind == "distill" else []):
        whole = torch.load(tmp_path / "whole" / "latest" / name, weights_only=True)
        again = torch.load(tmp_path / "cut" / "latest" / name, weights_only=True)
        assert whole.keys() == again.keys()
        for key in whole:
            torch.testing.assert_close(again[key], whole[key], rtol=0, atol=0, msg=f"{name}: {key}")


# ---------------------------------------------------------------- local reporting

def test_local_reporter_keeps_latest_and_best_by_its_validation_metric(tmp_path):
    saved: list[tuple[int, str]] = []
    lines: list[str] = []
    reporter = LocalReporter(tmp_path, total_epochs=5, checkpoint_every=2, printer=lines.append,
                             keep_by="val/top1", split="val")
    for epoch, top1 in enumerate([50.0, 70.0, 60.0, 65.0, 40.0], start=1):
        reporter(epoch, {"val/top1": top1, "train/loss": 1.0, "lr": 0.1, "images_per_sec": 10},
                 lambda path, epoch=epoch: saved.append((epoch, Path(path).name)))
    assert saved == [(2, "latest"), (2, "best"), (4, "latest"), (5, "latest")]
    assert reporter.best == 70.0 and reporter.best_epoch == 2 and reporter.kept == tmp_path / "best"
    assert len(lines) == 5 and "val/top1 40.00" in lines[-1]


def test_local_reporter_on_the_test_split_keeps_only_the_last_epoch(tmp_path):
    saved: list[tuple[int, str]] = []
    reporter = LocalReporter(tmp_path, total_epochs=3, printer=lambda line: None)
    for epoch, top1 in enumerate([50.0, 70.0, 40.0], start=1):
        reporter(epoch, {"test/top1": top1}, lambda path, epoch=epoch: saved.append((epoch, Path(path).name)))
    assert saved == [(1, "latest"), (2, "latest"), (3, "latest")]  # never a "best" chosen by test accuracy
    assert reporter.kept == tmp_path / "latest" and reporter.best_epoch == 3
    assert reporter.summary() == {"test/top1_last": 40.0, "test/top1_best_epoch": 70.0,
                                  "test/top1_best_epoch_num": 2.0}
    assert format_epoch(1, 2, {}).startswith("epoch 1/2  loss nan")


def test_metrics_file_is_json(teacher_dir):
    assert isinstance(json.loads((teacher_dir / "meta.json").read_text())["metrics"], dict)


def test_a_batch_that_workers_cannot_split_evenly_is_refused():
    """train.batch_size is global: each of scaling.num_workers workers takes an equal share, or the job stops before
    its first step with the two keys named."""
    cfg = tiny("train.batch_size=33", "scaling.num_workers=2")
    with pytest.raises(ValueError, match=r"^train.batch_size 33 is not divisible by scaling.num_workers 2$"):
        run_job(cfg, "teacher", Runtime(world_size=2, rank=1))
    seen: list[int] = []
    run_job(tiny("train.batch_size=32", "data.synthetic_train_size=64"), "teacher",
            Runtime(world_size=2, rank=1, report=lambda epoch, metrics, save: seen.append(epoch)))
    assert seen == [1]
