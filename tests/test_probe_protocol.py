"""A ``probe`` job follows the reference's linear-probe protocol (github.com/winycg/HSAKD eval_rep.py) by default,
and the shipped probe configs load."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from hsakd_ray.cli import main
from hsakd_ray.config import load_config
from hsakd_ray.data import build_datasets
from hsakd_ray.engine import build_task, run_job
from hsakd_ray.engine.runner import Runtime
from hsakd_ray.models import build_model
from hsakd_ray.probe_protocol import PROBE_DATA, PROBE_PROTOCOL

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

# Read off eval_rep.py (winycg/HSAKD at 28c8dc2): config key -> (value, line: code).
EVAL_REP = {
    "optim.lr": (0.1, "30: parser.add_argument('--init-lr', default=0.1)"),
    "optim.weight_decay": (0.0, "31: parser.add_argument('--weight-decay', default=0)"),
    "optim.milestones": ([30, 60, 90], "32: parser.add_argument('--milestones', default=[30, 60, 90])"),
    "optim.warmup_epochs": (0, "33: parser.add_argument('--warmup-epoch', default=0)"),
    "train.epochs": (100, "34: parser.add_argument('--epochs', default=100)"),
    "train.batch_size": (64, "35: parser.add_argument('--batch-size', default=64)"),
    "train.seed": (0, "38: parser.add_argument('--manual_seed', default=0)"),
    "optim.momentum": (0.9, "149-150: optim.SGD(net.classifier.parameters(), ..., momentum=0.9, ...)"),
    "optim.nesterov": (True, "150: weight_decay=args.weight_decay, nesterov=True)"),
    "optim.schedule": ("multistep", "194: cur_lr = args.init_lr * 0.1 ** bisect_right(args.milestones, epoch)"),
    "optim.gamma": (0.1, "194: 0.1 ** bisect_right(...)"),
    "data.image_size": (32, "80/88: transforms.RandomResizedCrop(32) / transforms.Resize(32)"),
    "data.val_fraction": (0.0, "86: testset = torchvision.datasets.STL10(..., split='test')"),
}

# eval_rep.py's pipeline per dataset: key -> (value, line: code).
EVAL_REP_DATA = {
    "stl10": {
        "data.augment": ("resized_crop_flip", "80-81: RandomResizedCrop(32), RandomHorizontalFlip(); 88: Resize(32)"),
        "data.flip": (True, "81: transforms.RandomHorizontalFlip()"),
        "data.mean": ([0.5, 0.5, 0.5], "83: transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))"),
        "data.std": ([0.5, 0.5, 0.5], "83"),
    },
    "tinyimagenet": {
        "data.augment": ("resized_crop_flip", "103-104: RandomResizedCrop(32), flip; 112: Resize(32)"),
        "data.flip": (True, "104: transforms.RandomHorizontalFlip()"),
        "data.mean": ([0.485, 0.456, 0.406], "106: Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))"),
        "data.std": ([0.229, 0.224, 0.225], "106"),
    },
}


def value(cfg, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def test_probe_defaults_are_eval_rep_values():
    cfg = load_config(None, [], kind="probe")
    assert {key: value(cfg, key) for key in EVAL_REP} == {key: v for key, (v, _) in EVAL_REP.items()}
    assert {key for key, _, _ in PROBE_PROTOCOL} == set(EVAL_REP)  # every default the protocol sets is checked here


@pytest.mark.parametrize("dataset", sorted(EVAL_REP_DATA))
def test_probe_data_defaults_are_eval_rep_values(dataset):
    cfg = load_config(None, [f"data.name={dataset}"], kind="probe")
    table = EVAL_REP_DATA[dataset]
    assert {key: value(cfg, key) for key in table} == {key: v for key, (v, _) in table.items()}
    assert {key for key, _, _ in PROBE_DATA[dataset]} == set(table)
    assert load_config(None, ["data.name=cifar100"], kind="probe").data.mean is None  # only where eval_rep has one


def write_stl10(root: Path) -> None:
    """STL-10 in its published binary layout (stl10_binary/*_X.bin, *_y.bin), 96 px images."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in [("train", 4), ("test", 3)]:
        rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        (np.arange(n, dtype=np.uint8) % 10 + 1).tofile(folder / f"{split}_y.bin")
    (folder / "unlabeled_X.bin").write_bytes(b"")


def test_probe_on_stl10_trains_and_tests_on_eval_rep_pipelines(tmp_path):
    """RandomResizedCrop(32) + flip + Normalize(0.5, 0.5) to train; Resize(32) + Normalize(0.5, 0.5) to test."""
    write_stl10(tmp_path)
    cfg = load_config(REPO / "configs" / "probe_stl10.yaml", [f"data.root={tmp_path}"], kind="probe")
    data = build_datasets(cfg.data)
    train, test = data.train.transform.transforms, data.eval.transform.transforms
    assert [type(t) for t in train] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert train[0].size == (32, 32) and train[0].scale == (0.08, 1.0)  # torchvision's defaults, as in eval_rep
    assert [type(t) for t in test] == [T.Resize, T.ToTensor, T.Normalize]
    assert tuple(test[0].size) == (32, 32)  # a square 96 px image: Resize(32) and Resize((32, 32)) agree
    assert list(train[-1].mean) == list(test[-1].mean) == [0.5] * 3 and list(test[-1].std) == [0.5] * 3
    assert data.train[0][0].shape == data.eval[0][0].shape == (3, 32, 32)


def test_probe_yaml_keys_win_and_other_jobs_keep_the_schema_defaults(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("optim: {lr: 0.05}\ntrain: {epochs: 3}\n")
    cfg = load_config(path, ["optim.weight_decay=1e-4"], kind="probe")
    assert (cfg.optim.lr, cfg.train.epochs, cfg.optim.weight_decay) == (0.05, 3, 1e-4)
    assert (cfg.optim.milestones, cfg.optim.nesterov, cfg.train.batch_size) == ([30, 60, 90], True, 64)
    teacher = load_config(path, [], kind="teacher")
    assert (teacher.optim.weight_decay, teacher.optim.milestones) == (5e-4, [150, 180, 210])


@pytest.mark.parametrize("name,dataset", [("probe_stl10.yaml", "stl10"), ("probe_tinyimagenet.yaml", "tinyimagenet")])
def test_shipped_probe_configs_load_with_the_protocol(name, dataset):
    cfg = load_config(REPO / "configs" / name, ["student.checkpoint=runs:/abc/checkpoint"], kind="probe")
    assert cfg.data.name == dataset and cfg.student.arch == "mobilenetv2"
    assert {key: value(cfg, key) for key in EVAL_REP} == {key: v for key, (v, _) in EVAL_REP.items()}


def test_shipped_probe_config_without_a_checkpoint_is_refused_in_one_line(capsys):
    assert main(["probe", str(REPO / "configs" / "probe_stl10.yaml"), "--local", "--set", "data.name=synthetic"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "student.checkpoint" in err


def test_probe_classifier_starts_as_the_architecture_initialises_its_own(tmp_path):
    """eval_rep.py builds a fresh model (its classifier initialised by the model) and loads all but the classifier:
    for MobileNetV2 that is N(0, 0.01) weights and zero bias, not nn.Linear's default."""
    from hsakd_ray.engine.checkpoint import write_checkpoint

    net = build_model("mobilenetv2", 100, [])
    write_checkpoint(tmp_path / "s", model_state=net.state_dict(), config_yaml="{}\n",
                     meta={"arch": "mobilenetv2", "num_classes": 100, "aux_stages": []})
    cfg = load_config(None, [f"student.checkpoint={tmp_path / 's'}", "student.arch=mobilenetv2",
                             "data.name=synthetic"], kind="probe")
    fc = build_task("probe", cfg, 10).network.backbone.classifier
    assert fc.out_features == 10 and torch.count_nonzero(fc.bias) == 0
    assert 0.005 < fc.weight.std().item() < 0.015  # nn.Linear's default would be ~ 1/sqrt(1280) / sqrt(3) = 0.016


def test_probe_job_trains_with_the_protocol_optimiser(tmp_path):
    """The job a probe config describes uses eval_rep's optimiser: Nesterov SGD, lr 0.1, no weight decay."""
    from hsakd_ray.engine.checkpoint import write_checkpoint

    net = build_model("resnet8", 4, [])
    write_checkpoint(tmp_path / "s", model_state=net.state_dict(), config_yaml="{}\n",
                     meta={"arch": "resnet8", "num_classes": 4, "aux_stages": []})
    cfg = load_config(None, [f"student.checkpoint={tmp_path / 's'}", "student.arch=resnet8", "data.name=synthetic",
                             "data.synthetic_train_size=32", "data.synthetic_test_size=16", "data.image_size=16",
                             "data.synthetic_classes=4", "train.epochs=1", "train.device=cpu"], kind="probe")
    seen = {}

    def report(epoch, metrics, save):
        seen.update(metrics)
        seen["state"] = torch.load(save(tmp_path / "ckpt") / "train_state.pt", weights_only=True)

    run_job(cfg, "probe", Runtime(report=report))
    group = seen["state"]["optimizer"]["param_groups"][0]
    assert (group["nesterov"], group["momentum"], group["weight_decay"]) == (True, 0.9, 0.0)
    assert seen["lr"] == 0.1
