"""Fresh weights are drawn as the reference implementation (winycg/HSAKD, models/*.py) draws them, per
architecture, for the backbone and for the auxiliary heads; the registry and stage counting need no weights."""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from hsakd_ray.models import build_model, list_architectures, num_stages, register_model
from hsakd_ray.models import registry as registry_module
from hsakd_ray.models.resnet_cifar import resnet8

torch.set_num_threads(1)

HE, TORCH = "he", "torch"
# arch: ((backbone conv, linear std, linear bias zero), (heads: the same)), from the reference's models/ files.
# conv "he": N(0, sqrt(2 / (k * k * out))); "torch": PyTorch's kaiming_uniform(a=sqrt(5)). linear std None: default.
SCHEMES = {
    # mobilenetv2.py:163-176 (backbone) and 256-269 (Auxiliary_Classifier, called at 238): He convs,
    # Linear N(0, 0.01) with zero bias.
    "mobilenetv2": ((HE, 0.01, True), (HE, 0.01, True)),
    # vgg.py:116-129 (backbone, called at 38): He convs, N(0, 0.01) linear, zero biases; vgg.py:178-191 defines the
    # heads' _initialize_weights inside __init__ and never calls it: PyTorch's default.
    "vgg13": ((HE, 0.01, True), (TORCH, None, False)),
    # ShuffleNetv1.py:55-68 (backbone): no init; 134-142 (heads): He convs, zero linear bias.
    "shufflenetv1": ((TORCH, None, False), (HE, None, True)),
    # ShuffleNetv2.py:100-117 and 159-190: no init anywhere.
    "shufflenetv2": ((TORCH, None, False), (TORCH, None, False)),
    # resnet.py:124-129 (backbone: He convs, default linear) and 222-230 (heads: He convs, zero linear bias).
    "resnet8x4": ((HE, None, False), (HE, None, True)),
    "resnet56": ((HE, None, False), (HE, None, True)),
    # resnetv2.py:86-91 and 185-190 (CIFAR ResNet-50): He convs, default linear, backbone and heads.
    "resnet50": ((HE, None, False), (HE, None, False)),
    # resnet_imagenet.py:147-152 and 244-249: He convs, default linear.
    "resnet18_imagenet": ((HE, None, False), (HE, None, False)),
    # wrn.py:79-87 and 150-158: He convs, zero linear bias, backbone and heads.
    "wrn_40_2": ((HE, None, True), (HE, None, True)),
}


@functools.cache
def network(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, 1000 if arch.endswith("_imagenet") else 100, "all")


def check_scheme(module: nn.Module, scheme: tuple[str, float | None, bool], where: str) -> None:
    conv, linear_std, bias_zero = scheme
    checked = 0
    for name, m in module.named_modules():
        w = m.weight.detach() if isinstance(m, (nn.Conv2d, nn.Linear)) else None
        if w is None or w.numel() < 4096:  # too few samples for a stable standard deviation
            continue
        fan_in = w[0].numel()
        fan_out = w.shape[0] * w[0, 0].numel()
        if isinstance(m, nn.Conv2d):
            if conv == HE:
                expected = math.sqrt(2.0 / fan_out)
            else:
                expected = 1.0 / math.sqrt(3.0 * fan_in)
                assert w.abs().max() <= 1.0 / math.sqrt(fan_in), f"{where}.{name}: not uniform(+-1/sqrt(fan_in))"
        else:
            expected = linear_std if linear_std is not None else 1.0 / math.sqrt(3.0 * fan_in)
            assert torch.all(m.bias == 0) == bias_zero, f"{where}.{name}: bias zero should be {bias_zero}"
        assert w.std().item() == pytest.approx(expected, rel=0.1), f"{where}.{name}: std {w.std():.4g}"
        checked += 1
    assert checked


@pytest.mark.parametrize("arch", SCHEMES)
def test_head_weights_are_drawn_as_the_reference_draws_them(arch: str) -> None:
    net = network(arch)
    for i, head in enumerate(net.heads):
        check_scheme(head, SCHEMES[arch][1], f"heads.{i}")
        assert torch.all(head.fc.bias == 0) == SCHEMES[arch][1][2]


@pytest.mark.parametrize("arch", SCHEMES)
def test_backbone_weights_are_drawn_as_the_reference_draws_them(arch: str) -> None:
    check_scheme(network(arch).backbone, SCHEMES[arch][0], "backbone")


def test_mobilenetv2_head_classifier_is_normal_0_01_with_zero_bias() -> None:
    fc = network("mobilenetv2").heads[0].fc
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert abs(fc.weight.mean().item()) < 0.001 and torch.all(fc.bias == 0)


def test_batch_norm_starts_at_identity_everywhere() -> None:
    for arch in SCHEMES:
        for m in network(arch).modules():
            if isinstance(m, nn.BatchNorm2d):
                assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_the_registry_names_an_architecture_after_its_function() -> None:
    def tiny_registered_net(num_classes: int):
        return resnet8(num_classes)

    try:
        register_model(tiny_registered_net)
        assert "tiny_registered_net" in list_architectures()
        with pytest.raises(ValueError, match="registered twice"):
            register_model(tiny_registered_net)
    finally:
        registry_module._REGISTRY.pop("tiny_registered_net", None)


def test_counting_stages_allocates_no_weights() -> None:
    devices = []

    def stage_count_probe(num_classes: int):
        net = resnet8(num_classes)
        devices.append(next(net.parameters()).device.type)
        return net

    try:
        register_model(stage_count_probe)
        assert num_stages("stage_count_probe") == 3
        assert devices == ["meta"]
    finally:
        registry_module._REGISTRY.pop("stage_count_probe", None)
        num_stages.cache_clear()
