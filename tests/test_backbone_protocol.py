"""Every registered architecture keeps the backbone protocol and carries HSAKD heads at any placement."""
from __future__ import annotations

import functools
import re

import pytest
import torch
import torchvision

from hsakd_ray.models import Backbone, HSAKDNet, build_backbone, list_architectures

torch.set_num_threads(1)  # tiny convs: a second thread only adds synchronisation on a shared 2-core machine

NUM_CLASSES = 10
ARCHS = list_architectures()

# docs/method.md, "Backbone sizes": the benchmark definitions (100 classes; 1000 for the ImageNet ResNets).
CIFAR100_PARAMS = {
    "wrn_40_2": 2_255_156, "wrn_16_2": 703_284, "wrn_40_1": 569_780, "wrn_16_1": 180_916,
    "resnet56": 861_620, "resnet20": 278_324, "resnet8": 83_892, "resnet32x4": 7_433_860, "resnet8x4": 1_233_540,
    "resnet50": 23_705_252, "vgg13": 9_462_180, "mobilenetv2": 812_836, "shufflenetv1": 949_258,
    "shufflenetv2": 1_355_528,
}
IMAGENET_PARAMS = {"resnet18_imagenet": 11_689_512, "resnet34_imagenet": 21_797_672, "resnet50_imagenet": 25_557_032}

# Placements as functions of the stage count S, with the heads they must produce (stage order, no repeats).
PLACEMENTS = {
    "all": ("all", lambda s: tuple(range(1, s + 1))),
    "none": (lambda s: [], lambda s: ()),
    "last": (lambda s: [s], lambda s: (s,)),
    "first": (lambda s: [1], lambda s: (1,)),
    "last_two": (lambda s: [s - 1, s], lambda s: (s - 1, s)),
}


@functools.cache
def backbone(arch: str) -> Backbone:
    return build_backbone(arch, NUM_CLASSES)


@functools.cache
def model(arch: str, placement: str) -> HSAKDNet:
    """One HSAKD network per (arch, placement); placements share the arch's backbone to build it only once."""
    aux_stages, _ = PLACEMENTS[placement]
    net = backbone(arch)
    stages = aux_stages if aux_stages == "all" else aux_stages(net.num_stages)
    return HSAKDNet(net, NUM_CLASSES, stages, arch=arch)


def images(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size)


@pytest.mark.parametrize("arch, classes, expected",
                         [(a, 100, n) for a, n in CIFAR100_PARAMS.items()]
                         + [(a, 1000, n) for a, n in IMAGENET_PARAMS.items()])
def test_backbone_parameter_count_matches_benchmark(arch: str, classes: int, expected: int) -> None:
    assert arch in ARCHS, f"{arch} is not registered"
    assert sum(p.numel() for p in build_backbone(arch, classes).parameters()) == expected


@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_gives_logits_and_one_joint_output_per_head(arch: str, placement: str) -> None:
    if placement == "last_two" and backbone(arch).num_stages < 2:
        pytest.skip("needs two stages")
    net = model(arch, placement)
    expected_stages = PLACEMENTS[placement][1](net.num_stages)
    with torch.no_grad():
        logits, aux = net(images())
    assert net.aux_stages == expected_stages
    assert logits.shape == (2, NUM_CLASSES)
    assert len(aux) == len(expected_stages)
    assert all(q.shape == (2, 4 * NUM_CLASSES) for q in aux)


@pytest.mark.parametrize("arch", ARCHS)
def test_repeated_and_unordered_stages_give_one_head_per_stage_in_order(arch: str) -> None:
    last = backbone(arch).num_stages
    net = HSAKDNet(backbone(arch), NUM_CLASSES, [last, last - 1, last], arch=arch)
    assert net.aux_stages == (last - 1, last)
    assert len(net.heads) == 2


@pytest.mark.parametrize("arch", ARCHS)
def test_small_16px_input_works(arch: str) -> None:
    with torch.no_grad():
        logits, aux = model(arch, "all")(images(16))
    assert logits.shape == (2, NUM_CLASSES)
    assert [q.shape for q in aux] == [(2, 4 * NUM_CLASSES)] * backbone(arch).num_stages


@pytest.mark.parametrize("arch", ARCHS)
def test_out_of_range_aux_stages_raise_naming_the_stages(arch: str) -> None:
    bad = [0, backbone(arch).num_stages + 1]
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        HSAKDNet(backbone(arch), NUM_CLASSES, bad + [1], arch=arch)


@pytest.mark.parametrize("arch", ARCHS)
def test_stages_declare_their_channels_and_head_copies_keep_stage_shapes(arch: str) -> None:
    """Stage l+1's fresh copy maps F_l to F_{l+1}'s shape; the extra stage after the last keeps F_S's shape."""
    net = model(arch, "all")
    with torch.no_grad():
        features = net.backbone.forward_stages(images())
        assert [f.shape[1] for f in features] == list(net.backbone.stage_channels)
        targets = features[1:] + features[-1:]
        for head, feature, target in zip(net.heads, features, targets, strict=True):
            assert head.blocks[0](feature).shape == target.shape


@pytest.mark.parametrize("arch", ARCHS)
def test_heads_are_freshly_initialised(arch: str) -> None:
    """No conv or linear weight of a head equals a backbone weight, so heads are not copies of trained stages."""
    net = model(arch, "all")
    backbone_weights = [p for p in net.backbone.parameters() if p.dim() > 1]
    for p in net.heads.parameters():
        if p.dim() > 1:
            assert not any(p.shape == q.shape and torch.equal(p, q) for q in backbone_weights)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("detach", [True, False])
def test_detached_features_keep_head_gradients_out_of_the_backbone(arch: str, detach: bool) -> None:
    """``detach_features`` (frozen mode): the aux loss trains only the heads; without it (joint) also the backbone."""
    net = model(arch, "last")
    net.zero_grad(set_to_none=True)
    net.detach_features = detach
    try:
        _, aux = net(images())
        torch.stack([q.sum() for q in aux]).sum().backward()
    finally:
        net.detach_features = False
    assert all(p.grad is not None for p in net.heads.parameters())
    backbone_has_grads = any(p.grad is not None for p in net.backbone.parameters())
    assert backbone_has_grads is not detach


@pytest.mark.parametrize("arch", sorted(IMAGENET_PARAMS))
def test_imagenet_resnet_loads_torchvision_weights_and_matches_its_logits(arch: str) -> None:
    reference = getattr(torchvision.models, arch.removesuffix("_imagenet"))(num_classes=1000).eval()
    net = build_backbone(arch, 1000)
    net.load_state_dict(reference.state_dict(), strict=True)
    net.eval()
    x = images(64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)
