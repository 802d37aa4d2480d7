"""`hsakd-ray import`: the reference implementation's released checkpoints and torchvision ResNets into checkpoint
folders, strictly (every tensor placed, shapes equal), and one-line refusals of anything else.

The reference's key layouts come from tests/data/reference_layouts.json.gz, written by
benchmarks/import_vs_reference.py from the reference's own model classes (models/wrn.py, resnet.py, resnetv2.py,
vgg.py, mobilenetv2.py, ShuffleNetv1.py, ShuffleNetv2.py, resnet_imagenet.py of github.com/winycg/HSAKD). That
script also checks, against those classes, that every imported network computes the reference's outputs; it records
where each tensor went, and these tests hold the importer to it.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
import torchvision

from hsakd_ray.cli import main
from hsakd_ray.config import Config
from hsakd_ray.engine.checkpoint import load_network, load_pretrained_backbone, read_meta
from hsakd_ray.engine.importers import import_checkpoint
from hsakd_ray.models import build_model

torch.set_num_threads(1)

LAYOUTS = json.loads(gzip.decompress((Path(__file__).parent / "data" / "reference_layouts.json.gz").read_bytes()))
ARCHS = sorted(LAYOUTS["archs"])
CLASSES = LAYOUTS["num_classes"]


def marked_state(arch: str, backbone_only: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A state dict in the reference's layout where tensor i is filled with i, and {their key: our key}."""
    state, dest = {}, {}
    for i, (key, shape, ours) in enumerate(LAYOUTS["archs"][arch]["keys"]):
        if backbone_only:
            if not key.startswith("backbone."):
                continue
            key = key[len("backbone."):]
        dtype = torch.long if key.endswith("num_batches_tracked") else torch.float32
        state[key] = torch.tensor(i, dtype=dtype).expand(shape)  # one stored number per tensor: small files
        dest[key] = ours
    return state, dest


def assert_each_tensor_landed(out: Path, state: dict[str, torch.Tensor], dest: dict[str, str]) -> None:
    imported = torch.load(out / "model.pt", weights_only=True)
    assert sorted(imported) == sorted(dest.values())  # every tensor of ours came from the file, none twice
    for key, ours in dest.items():
        got, want = imported[ours], state[key]
        assert got.shape == want.shape and got.dtype == want.dtype, key
        first, last = (0,) * got.dim(), (-1,) * got.dim()  # tensors move whole: their marks at both ends suffice
        assert got[first] == got[last] == want[first], f"{key} did not land in {ours}"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("hsakd-ray: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_layout_table_covers_the_published_pairs():
    published = {"wrn_40_2", "wrn_16_2", "wrn_40_1", "resnet56", "resnet20", "resnet32x4", "resnet8x4", "vgg13",
                 "mobilenetv2", "shufflenetv1", "shufflenetv2", "resnet50", "resnet34_imagenet", "resnet18_imagenet"}
    assert published <= set(ARCHS)
    assert LAYOUTS["reference"].startswith("github.com/winycg/HSAKD@")


def test_layout_table_places_reference_names_where_a_reader_expects():
    """Spot checks a reviewer can read against the reference's model files."""
    def dest(arch: str, key: str) -> str:
        return {k: o for k, _, o in LAYOUTS["archs"][arch]["keys"]}[key]

    assert dest("vgg13", "backbone.block0.0.weight") == "backbone.stages.0.0.weight"
    assert dest("vgg13", "backbone.block1.0.weight") == "backbone.stages.1.1.weight"  # after stage 2's max pool
    assert dest("vgg13", "backbone.block4.0.weight") == "backbone.stages.3.7.weight"  # stage 4 = pool+block3+block4
    assert dest("resnet50", "backbone.layer1.0.shortcut.0.weight") == "backbone.layer1.0.downsample.0.weight"
    assert dest("resnet50", "backbone.linear.bias") == "backbone.fc.bias"
    assert dest("wrn_40_2", "auxiliary_classifier.bn2.running_var") == "heads.1.tail.0.running_var"
    assert dest("mobilenetv2", "auxiliary_classifier.conv2_4.0.weight") == "heads.3.tail.0.weight"
    assert dest("mobilenetv2", "backbone.blocks.1.1.conv.0.weight") == "backbone.stages.0.2.conv.0.weight"
    assert dest("resnet8x4", "auxiliary_classifier.fc3.weight") == "heads.2.fc.weight"
    assert dest("shufflenetv2", "auxiliary_classifier.block_extractor1.2.weight") == "heads.0.tail.0.weight"


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_teacher_every_tensor_lands_in_its_place(arch, tmp_path):
    state, dest = marked_state(arch)
    src = tmp_path / f"{arch}_aux.pth.tar"
    torch.save({"net": state, "acc": 80.1, "epoch": 239}, src)  # what train_teacher_cifar.py writes
    done = import_checkpoint(src, arch, tmp_path / "out")
    assert (done.kind, done.num_classes) == ("teacher", CLASSES)
    assert_each_tensor_landed(done.path, state, dest)
    meta = read_meta(done.path)
    assert meta["arch"] == arch and meta["aux_stages"] == list(range(1, len(done.aux_stages) + 1))


@pytest.mark.parametrize("arch", ["wrn_40_2", "resnet32x4", "vgg13", "mobilenetv2", "shufflenetv1",
                                  "shufflenetv2", "resnet50", "resnet34_imagenet"])
def test_reference_backbone_every_tensor_lands_in_its_place(arch, tmp_path):
    state, dest = marked_state(arch, backbone_only=True)
    src = tmp_path / f"{arch}.pth"
    torch.save({"state_dict": state}, src)  # the pretrained backbones train_teacher_cifar.py --freezed reads
    done = import_checkpoint(src, arch, tmp_path / "out")
    assert (done.kind, done.aux_stages) == ("backbone", [])
    assert_each_tensor_landed(done.path, state, dest)


def test_imported_teacher_serves_a_student_placement_and_a_frozen_backbone(tmp_path):
    state, _ = marked_state("wrn_16_2")
    torch.save({"net": state}, tmp_path / "t.pth.tar")
    teacher = import_checkpoint(tmp_path / "t.pth.tar", "wrn_16_2_aux", tmp_path / "teacher").path
    net = load_network(teacher, "wrn_16_2", [2, 3])
    assert net.aux_stages == (2, 3)
    backbone, _ = marked_state("wrn_16_2", backbone_only=True)
    torch.save({"state_dict": backbone}, tmp_path / "b.pth")
    folder = import_checkpoint(tmp_path / "b.pth", "wrn_16_2", tmp_path / "backbone").path
    fresh = build_model("wrn_16_2", CLASSES, "all")
    load_pretrained_backbone(fresh, folder)  # teacher.pretrained may name an imported folder
    assert torch.equal(fresh.backbone.fc.weight, backbone["fc.weight"])


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_torchvision_resnet_imports_and_computes_torchvision_outputs(name, tmp_path, capsys):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():
        for key, t in tv.state_dict().items():  # BN statistics away from their defaults, so they must land too
            if "running" in key:
                t.copy_(torch.rand_like(t) + 0.5 if "var" in key else torch.randn_like(t) * 0.1)
    torch.save(tv.state_dict(), tmp_path / f"{name}.pth")
    out = tmp_path / "ckpt"
    assert main(["import", str(tmp_path / f"{name}.pth"), "--arch", f"{name}_imagenet", "--out", str(out)]) == 0
    assert "every one mapped" in capsys.readouterr().out
    net = load_network(out).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x)[0], tv.eval()(x), rtol=0, atol=1e-5)
    assert read_meta(out)["num_classes"] == 1000


def test_torchvision_file_with_a_foreign_name_is_refused(tmp_path, capsys):
    with torch.device("meta"):
        shapes = torchvision.models.resnet18(weights=None).state_dict()
    state = {("classifier." + k[3:] if k.startswith("fc.") else k): torch.zeros((), dtype=v.dtype).expand(v.shape)
             for k, v in shapes.items()}
    torch.save(state, tmp_path / "r18.pth")
    assert main(["import", str(tmp_path / "r18.pth"), "--arch", "resnet18_imagenet", "--out",
                 str(tmp_path / "o")]) == 2
    assert "classifier.weight is not a torchvision name of resnet18_imagenet (expected fc.weight)" in \
        one_line_error(capsys)


def _import_cli(tmp_path: Path, state: dict, *extra: str, arch: str = "resnet8x4") -> int:
    torch.save({"net": state}, tmp_path / "t.pth.tar")
    return main(["import", str(tmp_path / "t.pth.tar"), "--arch", arch, "--out", str(tmp_path / "out"), *extra])


def test_missing_tensor_is_refused_naming_the_place_left_empty(tmp_path, capsys):
    state, dest = marked_state("resnet8x4")
    dropped = "backbone.layer2.0.bn1.running_mean"
    del state[dropped]
    assert _import_cli(tmp_path, state) == 2
    assert dest[dropped] in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra", ["backbone.extra.weight", "auxiliary_classifier.proj1.weight", "optimizer.x"])
def test_extra_tensor_is_refused_as_unmapped(extra, tmp_path, capsys):
    state, _ = marked_state("resnet8x4")
    state[extra] = torch.zeros(3)
    assert _import_cli(tmp_path, state) == 2
    assert f"unmapped key {extra}" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_tensor_of_another_shape_is_refused_naming_it(tmp_path, capsys):
    state, _ = marked_state("resnet8x4")
    state["backbone.layer1.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
    assert _import_cli(tmp_path, state) == 2
    err = one_line_error(capsys)
    assert "backbone.layer1.0.conv2.weight [64, 64, 1, 1] does not fit backbone.layer1.0.conv2.weight [64, 64, 3, 3]" \
        in err


def test_checkpoint_of_another_architecture_is_refused(tmp_path, capsys):
    state, _ = marked_state("wrn_16_2")
    assert _import_cli(tmp_path, state, arch="wrn_40_2") == 2
    assert "does not fit" in one_line_error(capsys)


def test_missing_head_and_class_count_are_refused(tmp_path, capsys):
    state, _ = marked_state("resnet8x4")
    no_head3 = {k: v for k, v in state.items() if "extractor3" not in k and ".fc3." not in k}
    assert _import_cli(tmp_path, no_head3) == 2
    assert "auxiliary heads [1, 2]; resnet8x4 takes one per stage, 1..3" in one_line_error(capsys)
    assert _import_cli(tmp_path, state, "--num-classes", "100") == 2
    assert f"the classifier has {CLASSES} classes, --num-classes is 100" in one_line_error(capsys)


def test_existing_output_is_kept_unless_forced(tmp_path, capsys):
    state, _ = marked_state("resnet8x4")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert _import_cli(tmp_path, state) == 2
    assert "exists" in one_line_error(capsys)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert _import_cli(tmp_path, state, "--force") == 0
    assert read_meta(tmp_path / "out")["arch"] == "resnet8x4" and not (tmp_path / "out" / "keep.txt").exists()


def test_heads_file_imported_as_backbone_and_unknown_arch_are_refused(tmp_path, capsys):
    state, _ = marked_state("resnet8x4")
    assert _import_cli(tmp_path, state, "--kind", "backbone") == 2
    assert "--kind teacher" in one_line_error(capsys)
    assert _import_cli(tmp_path, state, arch="resnet9") == 2
    assert "--arch 'resnet9' is unknown" in one_line_error(capsys)


def test_imported_config_names_the_arch(tmp_path):
    state, _ = marked_state("resnet8x4")
    torch.save({"net": state}, tmp_path / "t.pth.tar")
    out = import_checkpoint(tmp_path / "t.pth.tar", "resnet8x4", tmp_path / "o").path
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["teacher"]["arch"] == "resnet8x4" and cfg["data"]["name"] == ("cifar10" if CLASSES == 10 else
                                                                             Config().data.name)


def test_file_in_another_module_order_is_refused_not_mis_mapped(tmp_path, capsys):
    """Two BN layers of equal width swapped in the file: roles and shapes still line up, the modules do not."""
    state, _ = marked_state("resnet8x4")
    keys = list(state)
    a, b = keys.index("backbone.layer1.0.bn1.weight"), keys.index("backbone.layer1.0.bn2.weight")
    keys[a], keys[b] = keys[b], keys[a]
    assert _import_cli(tmp_path, {k: state[k] for k in keys}) == 2
    assert "backbone.layer1.0.bn" in one_line_error(capsys)


def test_dataparallel_prefix_is_stripped(tmp_path):
    state, dest = marked_state("resnet8x4")
    torch.save({"net": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "dp.pth.tar")
    assert_each_tensor_landed(import_checkpoint(tmp_path / "dp.pth.tar", "resnet8x4_aux", tmp_path / "o").path,
                              state, dest)
