"""VGG, MobileNetV2 and ShuffleNet backbones: benchmark sizes, HSAKD stage split, and heads at every placement."""
from __future__ import annotations

import functools
import itertools

import pytest
import torch
from torch import nn

from hsakd_ray.models import HSAKDNet, build_backbone

torch.set_num_threads(1)  # tiny convs: a second thread only adds synchronisation on a shared 2-core machine

NUM_CLASSES = 10
ARCHS = ["vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "mobilenetv2", "shufflenetv1", "shufflenetv2"]

# docs/method.md, "Backbone sizes" (100 classes, backbone only).
CIFAR100_PARAMS = {"vgg13": 9_462_180, "mobilenetv2": 812_836, "shufflenetv1": 949_258, "shufflenetv2": 1_355_528}

# Side of each stage's output for a 32 px input: the resolutions winycg/HSAKD's feature maps have.
STAGE_SIDES_AT_32PX = {"vgg": (32, 16, 8, 4), "mobilenetv2": (32, 16, 8, 4), "shufflenet": (16, 8, 4)}

# Backbones whose classifier has a 1x1 conv after the last stage, which every head copies freshly.
FINAL_CONV_CHANNELS = {"mobilenetv2": 1280, "shufflenetv2": 1024}


def family(arch: str) -> str:
    return "vgg" if arch.startswith("vgg") else "shufflenet" if arch.startswith("shufflenet") else arch


def placements(num_stages: int) -> list[tuple[int, ...]]:
    """Every subset of 1..S, the empty one included."""
    stages = range(1, num_stages + 1)
    return [subset for r in range(num_stages + 1) for subset in itertools.combinations(stages, r)]


@functools.cache
def backbone(arch: str):
    return build_backbone(arch, NUM_CLASSES)


@functools.cache
def stage_features(arch: str, size: int) -> list[torch.Tensor]:
    with torch.no_grad():
        return backbone(arch).forward_stages(images(size))


@functools.cache
def model_with_all_heads(arch: str) -> HSAKDNet:
    return HSAKDNet(backbone(arch), NUM_CLASSES, "all", arch=arch)


def images(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size)


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def same_structure(a: nn.Module, b: nn.Module) -> bool:
    return [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]


def weights_differ(a: nn.Module, b: nn.Module) -> bool:
    """True when no conv or linear weight of ``a`` equals the matching one of ``b`` (BN starts at 1/0 in both)."""
    return not any(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True) if p.dim() > 1)


@pytest.mark.parametrize("arch, expected", list(CIFAR100_PARAMS.items()))
def test_backbone_parameter_count_matches_benchmark(arch: str, expected: int) -> None:
    assert param_count(build_backbone(arch, 100)) == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_every_placement_gives_logits_and_one_joint_output_per_head(arch: str) -> None:
    """All 2^S placements, on the meta device in eval mode: shapes propagate without computing (and without
    train-mode batch-norm bookkeeping), so the sweep stays fast; real forwards are checked below."""
    subsets = placements(backbone(arch).num_stages)
    with torch.device("meta"):
        shared = build_backbone(arch, NUM_CLASSES)
        for subset in subsets:
            net = HSAKDNet(shared, NUM_CLASSES, list(subset), arch=arch).eval()
            logits, aux = net(images())
            assert net.aux_stages == subset
            assert logits.shape == (2, NUM_CLASSES)
            assert [q.shape for q in aux] == [(2, 4 * NUM_CLASSES)] * len(subset)


@pytest.mark.parametrize("size", [32, 16])
@pytest.mark.parametrize("arch", ARCHS)
def test_all_heads_give_finite_outputs_on_real_images(arch: str, size: int) -> None:
    with torch.no_grad():
        logits, aux = model_with_all_heads(arch)(images(size))
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    assert len(aux) == backbone(arch).num_stages
    assert all(q.shape == (2, 4 * NUM_CLASSES) and torch.isfinite(q).all() for q in aux)


@pytest.mark.parametrize("arch", ARCHS)
def test_stages_have_declared_widths_and_hsakd_resolutions(arch: str) -> None:
    features = stage_features(arch, 32)
    assert tuple(f.shape[1] for f in features) == backbone(arch).stage_channels
    assert tuple(f.shape[-1] for f in features) == STAGE_SIDES_AT_32PX[family(arch)]


@pytest.mark.parametrize("arch", ARCHS)
def test_no_stage_collapses_at_16px(arch: str) -> None:
    sides = tuple(tuple(f.shape[-2:]) for f in stage_features(arch, 16))
    assert sides == tuple((side // 2, side // 2) for side in STAGE_SIDES_AT_32PX[family(arch)])


@pytest.mark.parametrize("arch", ARCHS)
def test_stage_copies_are_built_like_the_backbone_stages_but_freshly_initialised(arch: str) -> None:
    net = backbone(arch)
    for index in range(2, net.num_stages + 1):
        copy, original = net.make_stage(index), net.stages[index - 1]
        assert same_structure(copy, original)
        assert weights_differ(copy, original)


@pytest.mark.parametrize("arch", ARCHS)
def test_heads_share_no_weights_with_the_backbone(arch: str) -> None:
    net = model_with_all_heads(arch)
    backbone_weights = [p for p in net.backbone.parameters() if p.dim() > 1]
    head_weights = [p for p in net.heads.parameters() if p.dim() > 1]
    assert not any(p.shape == q.shape and torch.equal(p, q) for p in head_weights for q in backbone_weights)


@pytest.mark.parametrize("arch", ARCHS)
def test_extra_stage_after_the_last_keeps_its_width_and_resolution(arch: str) -> None:
    net, last = backbone(arch), stage_features(arch, 32)[-1]
    with torch.no_grad():
        assert net.make_stage(net.num_stages + 1)(last).shape == last.shape


@pytest.mark.parametrize("arch, channels", list(FINAL_CONV_CHANNELS.items()))
def test_heads_end_with_a_fresh_copy_of_the_final_conv(arch: str, channels: int) -> None:
    net = backbone(arch)
    tail = net.make_head_tail()
    assert net.head_channels == channels
    assert same_structure(tail, net.final_conv)
    assert weights_differ(tail, net.final_conv)
