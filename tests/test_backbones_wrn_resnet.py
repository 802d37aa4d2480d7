"""WRN, CIFAR ResNet and ImageNet ResNet backbones match their reference definitions and HSAKD's heads."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from hsakd_ray.models import build_backbone, build_model
from hsakd_ray.models.wrn import PreActBlock

torch.set_num_threads(1)  # tiny convs: a second thread only adds synchronisation on a shared 2-core machine

# Parameters of all auxiliary heads of winycg/HSAKD's ``*_aux`` networks (100 classes; 1000 for ImageNet),
# counted on a transcription of its models/wrn.py, resnet.py, resnetv2.py and resnet_imagenet.py.
OFFICIAL_HEAD_PARAMS = {
    "wrn_40_2": 5_769_328, "wrn_16_2": 1_928_304, "wrn_40_1": 1_484_432, "wrn_16_1": 522_384,
    "resnet56": 2_206_064, "resnet20": 762_992, "resnet8": 281_968, "resnet8x4": 3_557_296,
    "resnet32x4": 18_907_056, "resnet50": 76_976_704,
    "resnet18_imagenet": 47_555_456, "resnet34_imagenet": 76_474_240, "resnet50_imagenet": 106_482_304,
}

# (channels, height, width) of F_1 .. F_S.
STAGE_SHAPES_32PX = {
    "wrn_40_2": [(32, 32, 32), (64, 16, 16), (128, 8, 8)],
    "wrn_16_1": [(16, 32, 32), (32, 16, 16), (64, 8, 8)],
    "resnet20": [(16, 32, 32), (32, 16, 16), (64, 8, 8)],
    "resnet8x4": [(64, 32, 32), (128, 16, 16), (256, 8, 8)],
    "resnet50": [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)],
    "resnet18_imagenet": [(64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)],
    "resnet50_imagenet": [(256, 8, 8), (512, 4, 4), (1024, 2, 2), (2048, 1, 1)],
}


@pytest.mark.parametrize("arch, expected", OFFICIAL_HEAD_PARAMS.items())
def test_heads_match_the_official_hsakd_aux_networks(arch: str, expected: int) -> None:
    net = build_model(arch, 1000 if arch.endswith("_imagenet") else 100)
    assert sum(p.numel() for p in net.heads.parameters()) == expected


@pytest.mark.parametrize("arch, shapes", STAGE_SHAPES_32PX.items())
def test_stage_outputs_have_the_reference_widths_and_strides(arch: str, shapes: list[tuple[int, int, int]]) -> None:
    with torch.no_grad():
        features = build_backbone(arch, 10).forward_stages(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in features] == shapes


def test_wrn_state_dict_uses_repdistiller_names() -> None:
    """RepDistiller's pretrained WRN-40-2 teacher has exactly 227 entries with these names."""
    state = build_backbone("wrn_40_2", 100).state_dict()
    assert len(state) == 227
    for key in ("conv1.weight", "block1.layer.0.convShortcut.weight", "block3.layer.5.bn2.running_var",
                "bn1.weight", "fc.bias"):
        assert key in state


def test_cifar_resnet_state_dict_uses_repdistiller_names() -> None:
    state = build_backbone("resnet8x4", 100).state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer3.0.bn2.weight",
                "fc.weight"):
        assert key in state


def test_only_pre_activation_heads_normalise_before_pooling() -> None:
    wrn_tail = build_model("wrn_16_1", 10, [3]).heads[0].tail
    resnet_tail = build_model("resnet8", 10, [3]).heads[0].tail
    assert [type(m) for m in wrn_tail] == [nn.BatchNorm2d, nn.ReLU]
    assert isinstance(resnet_tail, nn.Identity)


@pytest.mark.parametrize("arch, blocks", [("wrn_40_2", 6), ("resnet56", 9), ("resnet50", 3),
                                          ("resnet34_imagenet", 3)])
def test_extra_stage_repeats_the_last_stage_at_stride_1_without_projection(arch: str, blocks: int) -> None:
    backbone = build_backbone(arch, 10)
    extra = backbone.make_stage(backbone.num_stages + 1)
    assert sum(isinstance(m, (PreActBlock, BasicBlock, Bottleneck)) for m in extra.modules()) == blocks
    assert not any(name.endswith(("downsample", "convShortcut")) for name, _ in extra.named_modules())


@pytest.mark.parametrize("arch", ["wrn_16_1", "resnet8", "resnet18_imagenet"])
def test_make_stage_refuses_stages_heads_never_copy(arch: str) -> None:
    backbone = build_backbone(arch, 10)
    for index in (1, backbone.num_stages + 2):
        with pytest.raises(ValueError, match=f"got {index}"):
            backbone.make_stage(index)
