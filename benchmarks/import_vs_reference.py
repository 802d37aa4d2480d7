"""`hsakd-ray import` against the reference implementation's own model classes (github.com/winycg/HSAKD).

For every covered architecture: build the reference's ``*_aux`` model, give every tensor random values (BN running
statistics included), save it as the reference does (``{'net': ...}`` for a teacher, ``{'state_dict': ...}`` for
its backbone), import it, and compare the outputs of both networks in eval mode on the same input (logits and every
head's logits). Also torchvision's ImageNet ResNets (plain state dicts). Prints the largest difference per check.

With ``--write-table`` it also writes tests/data/reference_layouts.json.gz: per architecture, the reference file and
function, and its (key, shape) list with the key of ours each tensor went to. The tests rebuild state dicts from
that table (CI has no copy of the reference) and check the importer still sends every tensor to the same place.

    git clone https://github.com/winycg/HSAKD /tmp/HSAKD   # or any checkout of it
    python benchmarks/import_vs_reference.py /tmp/HSAKD [--write-table]
"""
from __future__ import annotations

import argparse
import gzip
import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torchvision

from hsakd_ray.engine.checkpoint import load_network
from hsakd_ray.engine.importers import import_checkpoint, read_state

TABLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "reference_layouts.json.gz"

# our arch -> (reference module file, model function, input size)
COVERED: dict[str, tuple[str, str, int]] = {
    "wrn_40_2": ("wrn", "wrn_40_2_aux", 32), "wrn_40_1": ("wrn", "wrn_40_1_aux", 32),
    "wrn_16_2": ("wrn", "wrn_16_2_aux", 32),
    "resnet56": ("resnet", "resnet56_aux", 32), "resnet20": ("resnet", "resnet20_aux", 32),
    "resnet32x4": ("resnet", "resnet32x4_aux", 32), "resnet8x4": ("resnet", "resnet8x4_aux", 32),
    "vgg13": ("vgg", "vgg13_bn_aux", 32), "vgg8": ("vgg", "vgg8_bn_aux", 32),
    "mobilenetv2": ("mobilenetv2", "mobilenetV2_aux", 32), "shufflenetv1": ("ShuffleNetv1", "ShuffleV1_aux", 32),
    "shufflenetv2": ("ShuffleNetv2", "ShuffleV2_aux", 32), "resnet50": ("resnetv2", "ResNet50_aux", 32),
    "resnet18_imagenet": ("resnet_imagenet", "resnet18_imagenet_aux", 64),
    "resnet34_imagenet": ("resnet_imagenet", "resnet34_imagenet_aux", 64),
}
NUM_CLASSES = 10


def reference_models(repo: Path, work: Path) -> str:
    """Copy the reference's models/ package into ``work`` (importable there) and return the commit it came from."""
    git = ["git", "-C", str(repo)]
    commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    names = subprocess.run(git + ["ls-tree", "--name-only", "HEAD", "models/"], check=True, capture_output=True,
                           text=True).stdout.split()
    (work / "models").mkdir()
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(git + ["show", f"HEAD:{name}"], check=True, capture_output=True, text=True).stdout
            (work / name).write_text(text)
    sys.path.insert(0, str(work))
    return commit


def randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in module.state_dict().items():
            if key.endswith("num_batches_tracked"):
                t.fill_(7)
            elif key.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)


def largest_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / max(1e-12, a.abs().max().item())


def check_teacher(arch: str, ref: torch.nn.Module, size: int, tmp: Path) -> tuple[float, dict[str, str]]:
    randomise(ref, 0)
    ref.eval()
    src = tmp / f"{arch}_aux.pth.tar"
    torch.save({"net": ref.state_dict(), "acc": 0.5, "epoch": 239}, src)
    out = import_checkpoint(src, arch, tmp / f"{arch}_teacher")
    net = load_network(out.path).eval()
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        ref_logits, ref_heads = ref(x)[:2]
        logits, heads = net(x)
    diffs = [largest_difference(ref_logits, logits)]
    diffs += [largest_difference(r, o) for r, o in zip(ref_heads, heads, strict=True)]
    # where each tensor went: fill the file with distinct values and find them in the imported state
    marked = {k: torch.full_like(v, float(i), dtype=torch.float64) for i, (k, v) in enumerate(ref.state_dict().items())}
    torch.save({"net": {k: v.to(ref.state_dict()[k].dtype) for k, v in marked.items()}}, src)
    imported = torch.load(import_checkpoint(src, arch, tmp / f"{arch}_marks").path / "model.pt", weights_only=True)
    index = {int(v.flatten()[0].item()) if v.numel() else -1: k for k, v in imported.items()}
    dest = {k: index[i] for i, k in enumerate(marked)}
    return max(diffs), dest


def check_backbone(arch: str, ref: torch.nn.Module, size: int, tmp: Path) -> float:
    backbone = ref.backbone.eval()
    src = tmp / f"{arch}.pth"
    torch.save({"state_dict": backbone.state_dict()}, src)
    net = load_network(import_checkpoint(src, arch, tmp / f"{arch}_backbone").path).eval()
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        return largest_difference(backbone(x), net(x)[0])


def check_torchvision(arch: str, tmp: Path) -> float:
    tv = getattr(torchvision.models, arch.replace("_imagenet", ""))(weights=None)
    randomise(tv, 1)
    tv.eval()
    src = tmp / f"{arch}-tv.pth"
    torch.save(tv.state_dict(), src)
    net = load_network(import_checkpoint(src, arch, tmp / f"{arch}_tv").path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        return largest_difference(tv(x), net(x)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path, help="a git checkout (or bare repository) of winycg/HSAKD")
    parser.add_argument("--write-table", action="store_true", help=f"write {TABLE.relative_to(TABLE.parents[2])}")
    args = parser.parse_args()
    torch.manual_seed(0)
    table: dict = {}
    with tempfile.TemporaryDirectory() as work:
        tmp = Path(work)
        commit = reference_models(args.reference, tmp)
        print(f"reference commit {commit}; relative max |difference| of outputs, imported vs reference")
        for arch, (module, function, size) in COVERED.items():
            ref = getattr(importlib.import_module(f"models.{module}"), function)(num_classes=NUM_CLASSES)
            teacher, dest = check_teacher(arch, ref, size, tmp)
            backbone = check_backbone(arch, ref, size, tmp)
            print(f"{arch:<20} {module + '.py:' + function:<38} teacher {teacher:.1e}  backbone {backbone:.1e}")
            _, state = read_state(tmp / f"{arch}_aux.pth.tar")
            table[arch] = {"source": f"models/{module}.py: {function}(num_classes={NUM_CLASSES})",
                           "keys": [[k, list(v.shape), dest[k]] for k, v in state.items()]}
        for arch in ("resnet18_imagenet", "resnet34_imagenet"):
            tv = f"torchvision.models.{arch.replace('_imagenet', '')}"
            print(f"{arch:<20} {tv:<38} plain state dict {check_torchvision(arch, tmp):.1e}")
    if args.write_table:
        TABLE.parent.mkdir(parents=True, exist_ok=True)
        blob = json.dumps({"reference": f"github.com/winycg/HSAKD@{commit}", "num_classes": NUM_CLASSES,
                           "archs": table}, separators=(",", ":"))
        TABLE.write_bytes(gzip.compress(blob.encode(), mtime=0))
        print(f"wrote {TABLE} ({TABLE.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
