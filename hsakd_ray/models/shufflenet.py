"""CIFAR ShuffleNetV1 (3 groups) and ShuffleNetV2 (1x), RepDistiller's definitions, 3 stages each.

Both start with a 1x1 conv stem to 24 channels and halve the resolution at the start of every stage. Weights are
initialised as in the reference code (see each class). For V2, whose classifier has a final 1x1 conv to
1024 channels, every auxiliary head ends with a fresh copy of that conv, as in winycg/HSAKD.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import TORCH_DEFAULT, Backbone, InitScheme
from .registry import register_model

_STEM_CHANNELS = 24


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` equal groups: (N, g*c, H, W) viewed as (N, g, c) -> (N, c, g)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def conv_bn_relu_1x1(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv (no bias) + BN + ReLU: the stem, and V2's conv before pooling."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1, channel shuffle, 3x3 depthwise, grouped 1x1; stride 2 concatenates an avg-pooled input.

    ``group_first_conv=False`` makes the first 1x1 conv dense, as for the network's very first unit, whose
    input (the 24-channel stem) is too narrow to split into groups.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int,
                 group_first_conv: bool = True) -> None:
        super().__init__()
        self.downsample = stride == 2
        branch = out_channels - in_channels if self.downsample else out_channels
        mid = branch // 4
        self.first_groups = groups if group_first_conv else 1
        self.conv1 = nn.Conv2d(in_channels, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


def shufflenet_v1_stage(in_channels: int, out_channels: int, num_units: int, groups: int, stride: int,
                        group_first_conv: bool = True) -> nn.Sequential:
    """``num_units`` V1 units; the first has stride ``stride`` and, if ``group_first_conv`` is False, a dense 1x1."""
    units = [ShuffleV1Unit(in_channels, out_channels, stride, groups, group_first_conv)]
    units += [ShuffleV1Unit(out_channels, out_channels, 1, groups) for _ in range(num_units - 1)]
    return nn.Sequential(*units)


class ShuffleNetV1(Backbone):
    """ShuffleNetV1 with stages of widths ``stage_channels`` and ``units`` units, each starting at stride 2.

    The reference's ShuffleNetv1.py leaves the backbone at PyTorch's default initialisation; its auxiliary
    classifier draws He-normal convs and zeroes the linear bias.
    """

    weight_init = TORCH_DEFAULT
    head_init = InitScheme(linear_bias_zero=True)

    def __init__(self, num_classes: int, stage_channels: tuple[int, ...] = (240, 480, 960),
                 units: tuple[int, ...] = (4, 8, 4), groups: int = 3) -> None:
        super().__init__()
        self.stage_channels = stage_channels
        self.units = units
        self.groups = groups
        self.stem = conv_bn_relu_1x1(3, _STEM_CHANNELS)
        self.add_stages()
        self.classifier = nn.Linear(stage_channels[-1], num_classes)
        self.init_weights()

    def build_stage(self, index: int) -> nn.Sequential:
        if index == self.num_stages + 1:
            width = self.stage_channels[-1]
            return shufflenet_v1_stage(width, width, self.units[-1], self.groups, stride=1)
        in_channels = _STEM_CHANNELS if index == 1 else self.stage_channels[index - 2]
        return shufflenet_v1_stage(in_channels, self.stage_channels[index - 1], self.units[index - 1], self.groups,
                                   stride=2, group_first_conv=index > 1)


class ShuffleV2Unit(nn.Module):
    """Splits the channels in half, transforms one half (1x1, 3x3 depthwise, 1x1), concatenates and shuffles."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        kept, transformed = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([kept, self.branch(transformed)], 1), 2)


class ShuffleV2DownUnit(nn.Module):
    """Two branches over the whole input (3x3 depthwise + 1x1, and 1x1 + 3x3 depthwise + 1x1), each to half the
    output width, concatenated and shuffled; the depthwise convs carry the stride."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.left = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
        )
        self.right = nn.Sequential(
            nn.Conv2d(in_channels, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


def shufflenet_v2_stage(in_channels: int, out_channels: int, num_units: int, stride: int) -> nn.Sequential:
    """A down unit with stride ``stride`` followed by ``num_units`` split units."""
    return nn.Sequential(ShuffleV2DownUnit(in_channels, out_channels, stride),
                         *(ShuffleV2Unit(out_channels) for _ in range(num_units)))


class ShuffleNetV2(Backbone):
    """ShuffleNetV2 with stages of widths ``stage_channels`` (each a down unit plus ``units`` units), then a 1x1
    conv to ``last_channels`` before pooling. The reference's ShuffleNetv2.py initialises nothing: PyTorch's default
    everywhere, heads included."""

    weight_init = head_init = TORCH_DEFAULT

    def __init__(self, num_classes: int, stage_channels: tuple[int, ...] = (116, 232, 464),
                 units: tuple[int, ...] = (3, 7, 3), last_channels: int = 1024) -> None:
        super().__init__()
        self.stage_channels = stage_channels
        self.units = units
        self.last_channels = last_channels
        self.stem = conv_bn_relu_1x1(3, _STEM_CHANNELS)
        self.add_stages()
        self.final_conv = self.make_head_tail()
        self.classifier = nn.Linear(last_channels, num_classes)
        self.init_weights()

    def build_stage(self, index: int) -> nn.Sequential:
        if index == self.num_stages + 1:
            width = self.stage_channels[-1]
            return shufflenet_v2_stage(width, width, self.units[-1], stride=1)
        in_channels = _STEM_CHANNELS if index == 1 else self.stage_channels[index - 2]
        return shufflenet_v2_stage(in_channels, self.stage_channels[index - 1], self.units[index - 1], stride=2)

    def make_head_tail(self) -> nn.Module:
        return conv_bn_relu_1x1(self.stage_channels[-1], self.last_channels)

    @property
    def head_channels(self) -> int:
        return self.last_channels


@register_model
def shufflenetv1(num_classes: int) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes)


@register_model
def shufflenetv2(num_classes: int) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes)
