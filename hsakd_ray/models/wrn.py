"""Wide ResNets WRN-depth-k of the CIFAR KD benchmarks (RepDistiller / CRD definition, pre-activation blocks).

Module names follow RepDistiller (``block1.layer.0.convShortcut`` ...), so its pretrained WRN teachers load
unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, InitScheme
from .registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice; where the width changes, the shortcut is a 1x1 conv of the activated input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.convShortcut = (None if in_channels == out_channels
                             else nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        out = self.conv2(torch.relu(self.bn2(self.conv1(activated))))
        return out + shortcut


class WideStage(nn.Module):
    """``num_blocks`` pre-activation blocks, the first one changing width and stride (RepDistiller's NetworkBlock)."""

    def __init__(self, num_blocks: int, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(
            PreActBlock(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1)
            for i in range(num_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(Backbone):
    """3x3 stem to 16, stages of (depth - 4) / 6 blocks at widths 16k, 32k, 64k, then BN + ReLU, pool, ``fc``.

    Weights as the reference's wrn.py, heads included: He-normal convs, zero linear bias, default linear weight.
    """

    pre_activation = True
    stage_attr = "block"
    weight_init = head_init = InitScheme(linear_bias_zero=True)

    def __init__(self, depth: int, widen_factor: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a WRN needs depth 6n+4, got {depth}")
        self.blocks_per_stage = (depth - 4) // 6
        self.stage_channels = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.add_stages()
        self.bn1 = nn.BatchNorm2d(self.stage_channels[-1])
        self.fc = nn.Linear(self.stage_channels[-1], num_classes)
        self.init_weights()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(feature))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def build_stage(self, index: int) -> WideStage:
        if index == self.num_stages + 1:
            in_channels = out_channels = self.stage_channels[-1]
            stride = 1
        else:
            in_channels = 16 if index == 1 else self.stage_channels[index - 2]
            out_channels = self.stage_channels[index - 1]
            stride = 1 if index == 1 else 2
        return WideStage(self.blocks_per_stage, in_channels, out_channels, stride)


@register_model
def wrn_16_1(num_classes: int) -> WideResNet:
    return WideResNet(16, 1, num_classes)


@register_model
def wrn_16_2(num_classes: int) -> WideResNet:
    return WideResNet(16, 2, num_classes)


@register_model
def wrn_40_1(num_classes: int) -> WideResNet:
    return WideResNet(40, 1, num_classes)


@register_model
def wrn_40_2(num_classes: int) -> WideResNet:
    return WideResNet(40, 2, num_classes)
