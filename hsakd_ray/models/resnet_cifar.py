"""ResNets of the CIFAR KD benchmarks (RepDistiller / HSAKD), and the ``ResNet`` backbone shared with ImageNet.

Blocks are torchvision's ``BasicBlock`` / ``Bottleneck`` and module names follow torchvision (conv1, bn1,
layer1.., fc), which RepDistiller's CIFAR ResNets use too, so their checkpoints load as they are.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .base import Backbone
from .registry import register_model

ResidualBlock = type[BasicBlock] | type[Bottleneck]


def init_resnet_weights(module: nn.Module) -> nn.Module:
    """The reference init (RepDistiller, torchvision): He-normal (fan-out) convs, BN at identity; Linear default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def make_res_stage(block: ResidualBlock, in_channels: int, planes: int, num_blocks: int,
                   stride: int) -> nn.Sequential:
    """``num_blocks`` freshly initialised blocks; the first projects the shortcut (1x1 conv + BN) if shape changes."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_channels))
    blocks = [block(in_channels, planes, stride, downsample)]
    blocks += [block(out_channels, planes) for _ in range(1, num_blocks)]
    return init_resnet_weights(nn.Sequential(*blocks))


class ResNet(Backbone):
    """Stem, then stages ``layer1..layerS`` (stage 1 at stride 1, the others at stride 2), average pool, ``fc``.

    The CIFAR stem is a 3x3 conv at stride 1; the ImageNet stem (``imagenet_stem``) is torchvision's 7x7 conv at
    stride 2 followed by a 3x3 max pool.
    """

    def __init__(self, block: ResidualBlock, depths: Sequence[int], widths: Sequence[int], stem_width: int,
                 num_classes: int, imagenet_stem: bool = False) -> None:
        super().__init__()
        if len(depths) != len(widths):
            raise ValueError(f"ResNet needs one depth per stage width, got depths {depths} and widths {widths}")
        self.block = block
        self.depths = tuple(depths)
        self.widths = tuple(widths)
        self.stem_width = stem_width
        self.stage_channels = tuple(w * block.expansion for w in widths)
        if imagenet_stem:
            self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        for index in range(1, self.num_stages + 1):
            setattr(self, f"layer{index}", self._build_stage(index))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.stage_channels[-1], num_classes)
        init_resnet_weights(self)

    def _build_stage(self, index: int) -> nn.Sequential:
        """Stage ``index`` (1..S) as the backbone has it, or the extra stride-1 stage of the final width (S+1)."""
        if index == self.num_stages + 1:
            return make_res_stage(self.block, self.stage_channels[-1], self.widths[-1], self.depths[-1], 1)
        in_channels = self.stem_width if index == 1 else self.stage_channels[index - 2]
        stride = 1 if index == 1 else 2
        return make_res_stage(self.block, in_channels, self.widths[index - 1], self.depths[index - 1], stride)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
            features.append(x)
        return features

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(feature), 1))

    def make_stage(self, index: int) -> nn.Module:
        if not 2 <= index <= self.num_stages + 1:
            raise ValueError(f"make_stage index must be in 2..{self.num_stages + 1}, got {index}")
        return self._build_stage(index)


def cifar_basic_resnet(depth: int, widths: Sequence[int], num_classes: int) -> ResNet:
    """RepDistiller's ResNet-``depth`` (6n+2): a 3x3 stem to ``widths[0]``, then three stages of n BasicBlocks."""
    if (depth - 2) % 6:
        raise ValueError(f"a BasicBlock CIFAR ResNet needs depth 6n+2, got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), widths[1:], widths[0], num_classes)


@register_model("resnet8")
def resnet8(num_classes: int) -> ResNet:
    return cifar_basic_resnet(8, (16, 16, 32, 64), num_classes)


@register_model("resnet14")
def resnet14(num_classes: int) -> ResNet:
    return cifar_basic_resnet(14, (16, 16, 32, 64), num_classes)


@register_model("resnet20")
def resnet20(num_classes: int) -> ResNet:
    return cifar_basic_resnet(20, (16, 16, 32, 64), num_classes)


@register_model("resnet32")
def resnet32(num_classes: int) -> ResNet:
    return cifar_basic_resnet(32, (16, 16, 32, 64), num_classes)


@register_model("resnet44")
def resnet44(num_classes: int) -> ResNet:
    return cifar_basic_resnet(44, (16, 16, 32, 64), num_classes)


@register_model("resnet56")
def resnet56(num_classes: int) -> ResNet:
    return cifar_basic_resnet(56, (16, 16, 32, 64), num_classes)


@register_model("resnet110")
def resnet110(num_classes: int) -> ResNet:
    return cifar_basic_resnet(110, (16, 16, 32, 64), num_classes)


@register_model("resnet8x4")
def resnet8x4(num_classes: int) -> ResNet:
    return cifar_basic_resnet(8, (32, 64, 128, 256), num_classes)


@register_model("resnet32x4")
def resnet32x4(num_classes: int) -> ResNet:
    return cifar_basic_resnet(32, (32, 64, 128, 256), num_classes)


@register_model("resnet50")
def resnet50(num_classes: int) -> ResNet:
    """The CIFAR bottleneck ResNet-50 of the KD benchmarks: 3x3 stem to 64, four stages [3, 4, 6, 3], no max pool."""
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), 64, num_classes)
