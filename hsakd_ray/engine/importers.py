"""Published weights into hsakd-ray checkpoint folders: the reference implementation's (github.com/winycg/HSAKD)
teachers with auxiliary heads (``{'net': ...}``) and backbones (``{'state_dict': ...}``, CRD/SSKD's releases), and
torchvision's ImageNet ResNets (a plain state dict).

The mapping is structural, not a table of names: the reference registers every module in the same order as our
model (stem, stages, classifier; per head its stage copies, tail, linear layer), so its tensors are paired with ours
in order, within segments (the backbone, then one segment per head), and each pair must agree on the tensor's role
(weight, bias, running_mean, ...) and shape, and each reference module must land in one module of ours. Anything
left over, missing or of another shape is refused with one line naming the first such key.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, dump_config
from ..models import HSAKDNet, build_model, list_architectures, num_stages
from ..progress_bars import step_bar
from .checkpoint import CheckpointError, load_tensor_file, load_weights, write_checkpoint

KINDS = ("auto", "teacher", "backbone", "torchvision")

# The reference's model functions (models/*.py, the names its scripts take as --arch) -> our architecture.
REFERENCE_ARCHS: dict[str, str] = {
    "wrn_40_2_aux": "wrn_40_2", "wrn_40_1_aux": "wrn_40_1", "wrn_16_2_aux": "wrn_16_2",
    "resnet56_aux": "resnet56", "resnet20_aux": "resnet20", "resnet32x4_aux": "resnet32x4",
    "resnet8x4_aux": "resnet8x4", "vgg13_bn_aux": "vgg13", "vgg8_bn_aux": "vgg8", "vgg13_bn": "vgg13",
    "vgg8_bn": "vgg8", "vgg11_bn": "vgg11", "vgg16_bn": "vgg16", "vgg19_bn": "vgg19",
    "mobilenetV2_aux": "mobilenetv2", "mobilenetV2": "mobilenetv2", "ShuffleV1_aux": "shufflenetv1",
    "ShuffleV1": "shufflenetv1", "ShuffleV2_aux": "shufflenetv2", "ShuffleV2": "shufflenetv2",
    "ResNet50_aux": "resnet50", "ResNet50": "resnet50", "resnet18_imagenet_aux": "resnet18_imagenet",
    "resnet34_imagenet_aux": "resnet34_imagenet", "resnet50_imagenet_aux": "resnet50_imagenet",
}

# Per-head modules of the reference's Auxiliary_Classifier: stage copies, WRN's BN, MobileNetV2's 1x1 conv, linear.
_HEAD_KEY = re.compile(r"^auxiliary_classifier\.(block_extractor|bn|conv2_|fc)(\d+)\.")
_WRAPPERS = ("net", "state_dict", "model")  # reference teachers/baselines, CRD/SSKD backbones, RepDistiller


@dataclass
class Imported:
    """What ``import_checkpoint`` wrote."""

    path: Path
    arch: str
    kind: str
    num_classes: int
    aux_stages: list[int]
    tensors: int


def resolve_arch(name: str) -> str:
    """Our architecture for ``name`` (ours, or the reference's model function name)."""
    if name in list_architectures():
        return name
    if name in REFERENCE_ARCHS:
        return REFERENCE_ARCHS[name]
    raise CheckpointError(f"--arch {name!r} is unknown; choose one of: {', '.join(list_architectures())} "
                          "(or a reference name such as wrn_40_2_aux)")


def read_state(path: str | Path) -> tuple[str | None, dict[str, torch.Tensor]]:
    """(wrapper key or None, state dict) of a weights file, loaded with ``weights_only=True``; ``module.`` (a
    DataParallel save) is stripped."""
    obj = load_tensor_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{str(path)!r} holds {type(obj).__name__}, not a state dict")
    wrapper = None
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapper = next((k for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if wrapper is None:
            raise CheckpointError(f"{str(path)!r} is neither a state dict nor a checkpoint holding one under "
                                  f"{' / '.join(repr(k) for k in _WRAPPERS)} (keys: {', '.join(map(str, obj))[:120]})")
        obj = obj[wrapper]
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{str(path)!r}: entry {bad!r} is not a tensor")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return wrapper, dict(obj)


def detect_kind(wrapper: str | None, state: dict[str, torch.Tensor], arch: str) -> str:
    """``teacher`` when the reference's heads are there, ``torchvision`` for a plain ImageNet ResNet state dict,
    else ``backbone``."""
    if any(k.startswith("auxiliary_classifier.") for k in state):
        return "teacher"
    if wrapper is None and arch.endswith("_imagenet") and not any(k.startswith("backbone.") for k in state):
        return "torchvision"
    return "backbone"


def _role(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _module(key: str) -> str:
    return key.rsplit(".", 1)[0]


def pair_in_order(theirs: Sequence[tuple[str, torch.Tensor]], ours: dict[str, torch.Tensor], source: str,
                  what: str) -> dict[str, str]:
    """Pair the tensors of one segment in registration order: {our key: their key}. Each pair must agree on role
    and shape, and their modules must map one to one."""
    ours_items = list(ours.items())
    pairs: dict[str, str] = {}
    modules: dict[str, str] = {}
    for (their_key, value), (our_key, target) in zip(theirs, ours_items):
        their_shape, our_shape = list(value.shape), list(target.shape)
        if _role(their_key) != _role(our_key) or their_shape != our_shape:
            raise CheckpointError(f"{source}: {their_key} {their_shape} does not fit {our_key} {our_shape}, the "
                                  f"tensor at its position in {what}")
        if modules.setdefault(_module(their_key), _module(our_key)) != _module(our_key):
            raise CheckpointError(f"{source}: {their_key} would land in {_module(our_key)}, but its module's other "
                                  f"tensors went to {modules[_module(their_key)]} ({what})")
        pairs[our_key] = their_key
    if len(theirs) > len(ours_items):
        raise CheckpointError(f"{source}: unmapped key {theirs[len(ours_items)][0]} ({what} has "
                              f"{len(ours_items)} tensors, the file {len(theirs)})")
    if len(theirs) < len(ours_items):
        raise CheckpointError(f"{source}: no tensor for {ours_items[len(theirs)][0]} ({what} has "
                              f"{len(ours_items)} tensors, the file {len(theirs)})")
    if len(set(modules.values())) != len(modules):
        raise CheckpointError(f"{source}: two modules of the file land in one of ours ({what})")
    return pairs


def _segments(state: dict[str, torch.Tensor], kind: str, source: str) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """The file's tensors by segment: ``backbone`` and, for a teacher, ``head<i>`` (1-based), in file order."""
    segments: dict[str, list[tuple[str, torch.Tensor]]] = {"backbone": []}
    prefixed = kind == "teacher" or (bool(state) and all(k.startswith("backbone.") for k in state))
    for key, value in state.items():
        if prefixed and key.startswith("backbone."):
            segments["backbone"].append((key, value))
            continue
        match = _HEAD_KEY.match(key) if kind == "teacher" else None
        if match:
            segments.setdefault(f"head{int(match.group(2))}", []).append((key, value))
        elif not prefixed:
            segments["backbone"].append((key, value))
        else:
            raise CheckpointError(f"{source}: unmapped key {key} (a {kind} file holds backbone.* and "
                                  "auxiliary_classifier.{block_extractor,bn,conv2_,fc}<i>.*)")
    return segments


def _num_classes(backbone: list[tuple[str, torch.Tensor]], source: str) -> int:
    """Classes of the backbone's classifier: the last 2-D tensor (fc / linear / classifier weight)."""
    weights = [v for k, v in backbone if v.dim() == 2 and _role(k) == "weight"]
    if not weights:
        raise CheckpointError(f"{source}: no classifier weight (a 2-D tensor) among the backbone's tensors")
    return int(weights[-1].shape[0])


def convert_state(state: dict[str, torch.Tensor], arch: str, kind: str, source: str,
                  num_classes: int | None = None) -> HSAKDNet:
    """Our network of ``arch`` holding the file's tensors (heads at every stage for a teacher, none otherwise)."""
    segments = _segments(state, kind, source)
    found = _num_classes(segments["backbone"], source)
    if num_classes is not None and num_classes != found:
        raise CheckpointError(f"{source}: the classifier has {found} classes, --num-classes is {num_classes}")
    heads = sorted(int(name[4:]) for name in segments if name.startswith("head"))
    stages = num_stages(arch)
    if kind == "teacher" and heads != list(range(1, stages + 1)):
        raise CheckpointError(f"{source}: auxiliary heads {heads}; {arch} takes one per stage, 1..{stages}")
    with torch.device("meta"):  # no weights to initialise: the file's tensors become the network's own
        net = build_model(arch, found, "all" if kind == "teacher" else [])
    shapes = net.state_dict()
    pairs: dict[str, str] = {}
    ours = {k: v for k, v in shapes.items() if k.startswith("backbone.")}
    pairs.update(pair_in_order(segments["backbone"], ours, source, f"{arch}'s backbone"))
    if kind == "torchvision":
        renamed = next((o for o, t in pairs.items() if o != f"backbone.{t}"), None)
        if renamed is not None:
            raise CheckpointError(f"{source}: {pairs[renamed]} is not a torchvision name of {arch} "
                                  f"(expected {renamed[len('backbone.'):]})")
    for i in heads:
        ours = {k: v for k, v in shapes.items() if k.startswith(f"heads.{i - 1}.")}
        pairs.update(pair_in_order(segments[f"head{i}"], ours, source, f"{arch}'s head at stage {i}"))
    load_weights(net, {k: state[t] for k, t in pairs.items()}, source, assign=True)
    left = next((k for k, t in itertools.chain(net.named_parameters(), net.named_buffers()) if t.is_meta), None)
    if left is not None:
        raise CheckpointError(f"{source}: nothing in the file for {left}")
    return net


def import_checkpoint(source: str | Path, arch: str, out: str | Path, kind: str = "auto",
                      num_classes: int | None = None, force: bool = False) -> Imported:
    """Convert the weights file ``source`` into the checkpoint folder ``out`` (written atomically)."""
    if kind not in KINDS:
        raise CheckpointError(f"--kind {kind!r} is unknown; allowed: {', '.join(KINDS)}")
    arch = resolve_arch(arch)
    out = Path(out)
    if out.exists() and not force:
        raise CheckpointError(f"--out {str(out)!r} exists; choose a new folder, or --force to replace it")
    bar = step_bar(f"importing {Path(source).name} (read, convert, write)", 3)
    wrapper, state = read_state(source)
    bar.update(1)
    label = str(source)
    found = detect_kind(wrapper, state, arch)
    kind = found if kind == "auto" else kind
    if kind == "torchvision" and wrapper is not None:
        raise CheckpointError(f"{label} holds its weights under {wrapper!r}; a torchvision file is a plain state dict")
    if kind == "torchvision" and not arch.endswith("_imagenet"):
        raise CheckpointError(f"--kind torchvision needs an ImageNet ResNet (resnet18_imagenet, resnet34_imagenet, "
                              f"resnet50_imagenet), got {arch!r}")
    if kind != "teacher" and found == "teacher":
        raise CheckpointError(f"{label} holds auxiliary heads (auxiliary_classifier.*): import it with --kind teacher")
    net = convert_state(state, arch, kind, label, num_classes)
    bar.update(1)
    cfg = _config(arch, net)
    meta = {"kind": "import", "source_kind": kind, "source": str(Path(source).resolve()), "method": None,
            "arch": arch, "num_classes": net.num_classes, "aux_stages": list(net.aux_stages), "epoch": 0,
            "metrics": {}, "dataset": cfg.data.name}
    write_checkpoint(out, model_state=net.state_dict(), meta=meta, config_yaml=dump_config(cfg))
    bar.update(1)
    bar.close()
    return Imported(out, arch, kind, net.num_classes, list(net.aux_stages), len(state))


def _config(arch: str, net: HSAKDNet) -> Config:
    """The config stored with the checkpoint (``evaluate`` reads its data section: set data.* with ``--set``)."""
    cfg = Config()
    cfg.teacher.arch = cfg.student.arch = arch
    cfg.teacher.aux_stages = cfg.student.aux_stages = "all" if net.aux_stages else []
    if arch.endswith("_imagenet"):
        cfg.data.name = "imagefolder"
    else:
        cfg.data.name = {100: "cifar100", 10: "cifar10"}.get(net.num_classes, "imagefolder")
    return cfg
