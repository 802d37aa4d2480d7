"""ResNets of the CIFAR KD benchmarks (RepDistiller / HSAKD), and the ``ResNet`` backbone shared with ImageNet.

Blocks are torchvision's ``BasicBlock`` / ``Bottleneck`` and module names follow torchvision (conv1, bn1,
layer1.., fc), which RepDistiller's CIFAR ResNets use too, so their checkpoints load as they are.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .base import Backbone, InitScheme
from .registry import register_model

ResidualBlock = type[BasicBlock] | type[Bottleneck]

# The reference's basic-block CIFAR ResNets (models/resnet.py) zero their head's linear bias; its bottleneck
# ResNet-50 (resnetv2.py) and the ImageNet ResNets (resnet_imagenet.py) leave linear layers at PyTorch's default.
HEAD_INIT_ZERO_BIAS = InitScheme(linear_bias_zero=True)


def make_res_stage(block: ResidualBlock, in_channels: int, planes: int, num_blocks: int,
                   stride: int) -> nn.Sequential:
    """``num_blocks`` blocks; the first projects the shortcut (1x1 conv + BN) if the shape changes."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_channels))
    blocks = [block(in_channels, planes, stride, downsample)]
    blocks += [block(out_channels, planes) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


class ResNet(Backbone):
    """Stem, then stages ``layer1..layerS`` (stage 1 at stride 1, the others at stride 2), average pool, ``fc``.

    The CIFAR stem is a 3x3 conv at stride 1; the ImageNet stem (``imagenet_stem``) is torchvision's 7x7 conv at
    stride 2 followed by a 3x3 max pool. Weights: He-normal convs, default linear (the reference and torchvision).
    """

    stage_attr = "layer"

    def __init__(self, block: ResidualBlock, depths: Sequence[int], widths: Sequence[int], stem_width: int,
                 num_classes: int, imagenet_stem: bool = False, head_init: InitScheme = InitScheme()) -> None:
        super().__init__()
        if len(depths) != len(widths):
            raise ValueError(f"ResNet needs one depth per stage width, got depths {depths} and widths {widths}")
        self.block = block
        self.depths = tuple(depths)
        self.widths = tuple(widths)
        self.stem_width = stem_width
        self.stage_channels = tuple(w * block.expansion for w in widths)
        self.head_init = head_init
        if imagenet_stem:
            self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.add_stages()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.stage_channels[-1], num_classes)
        self.init_weights()

    def build_stage(self, index: int) -> nn.Sequential:
        if index == self.num_stages + 1:
            return make_res_stage(self.block, self.stage_channels[-1], self.widths[-1], self.depths[-1], 1)
        in_channels = self.stem_width if index == 1 else self.stage_channels[index - 2]
        stride = 1 if index == 1 else 2
        return make_res_stage(self.block, in_channels, self.widths[index - 1], self.depths[index - 1], stride)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(feature), 1))


def cifar_basic_resnet(depth: int, widths: Sequence[int], num_classes: int) -> ResNet:
    """RepDistiller's ResNet-``depth`` (6n+2): a 3x3 stem to ``widths[0]``, then three stages of n BasicBlocks."""
    if (depth - 2) % 6:
        raise ValueError(f"a BasicBlock CIFAR ResNet needs depth 6n+2, got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), widths[1:], widths[0], num_classes, head_init=HEAD_INIT_ZERO_BIAS)


@register_model
def resnet8(num_classes: int) -> ResNet:
    return cifar_basic_resnet(8, (16, 16, 32, 64), num_classes)


@register_model
def resnet14(num_classes: int) -> ResNet:
    return cifar_basic_resnet(14, (16, 16, 32, 64), num_classes)


@register_model
def resnet20(num_classes: int) -> ResNet:
    return cifar_basic_resnet(20, (16, 16, 32, 64), num_classes)


@register_model
def resnet32(num_classes: int) -> ResNet:
    return cifar_basic_resnet(32, (16, 16, 32, 64), num_classes)


@register_model
def resnet44(num_classes: int) -> ResNet:
    return cifar_basic_resnet(44, (16, 16, 32, 64), num_classes)


@register_model
def resnet56(num_classes: int) -> ResNet:
    return cifar_basic_resnet(56, (16, 16, 32, 64), num_classes)


@register_model
def resnet110(num_classes: int) -> ResNet:
    return cifar_basic_resnet(110, (16, 16, 32, 64), num_classes)


@register_model
def resnet8x4(num_classes: int) -> ResNet:
    return cifar_basic_resnet(8, (32, 64, 128, 256), num_classes)


@register_model
def resnet32x4(num_classes: int) -> ResNet:
    return cifar_basic_resnet(32, (32, 64, 128, 256), num_classes)


@register_model
def resnet50(num_classes: int) -> ResNet:
    """The CIFAR bottleneck ResNet-50 of the KD benchmarks: 3x3 stem to 64, four stages [3, 4, 6, 3], no max pool."""
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), 64, num_classes)
