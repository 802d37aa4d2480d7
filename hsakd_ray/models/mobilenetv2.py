"""CIFAR MobileNetV2 (RepDistiller's ``mobile_half``: width 0.5, expansion 6) in the 4 stages HSAKD uses.

As in winycg/HSAKD, the stem is a stride-1 3x3 conv (the published 73.51 % baseline uses it; RepDistiller's
stride-2 stem has the same parameters but halves every feature map). The seven inverted-residual groups
form the stages [16, 24], [32], [64, 96], [160, 320]; a final 1x1 conv to 1280 channels precedes pooling.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .base import Backbone, InitScheme
from .registry import register_model

# Per stage, its inverted-residual groups: (expansion, channels at width 1, blocks, stride of the first block).
_STAGE_GROUPS: tuple[tuple[tuple[int, int, int, int], ...], ...] = (
    ((1, 16, 1, 1), (6, 24, 2, 1)),
    ((6, 32, 3, 2),),
    ((6, 64, 4, 2), (6, 96, 3, 1)),
    ((6, 160, 3, 2), (6, 320, 1, 1)),
)
_STEM_CHANNELS = 32
_LAST_CHANNELS = 1280


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Stride-1 conv (no bias) + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand + ReLU, 3x3 depthwise + ReLU, 1x1 linear projection; identity shortcut when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_shortcut = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_shortcut else self.conv(x)


def inverted_residual_stage(in_channels: int, settings: Sequence[tuple[int, int, int, int]], width_mult: float,
                            first_stride: int | None = None) -> nn.Sequential:
    """The block groups of ``settings`` in sequence; ``first_stride`` overrides the stride of the first block."""
    blocks = []
    for position, (expansion, channels, num_blocks, stride) in enumerate(settings):
        out_channels = int(channels * width_mult)
        if position == 0 and first_stride is not None:
            stride = first_stride
        for b in range(num_blocks):
            blocks.append(InvertedResidual(in_channels, out_channels, stride if b == 0 else 1, expansion))
            in_channels = out_channels
    return nn.Sequential(*blocks)


class MobileNetV2(Backbone):
    """MobileNetV2 at ``width_mult``; auxiliary heads end with a fresh copy of the final 1x1 conv, as in HSAKD.

    Weights as the reference's mobilenetv2.py, heads included: He-normal convs, N(0, 0.01) linear, zero biases.
    """

    weight_init = head_init = InitScheme(linear_std=0.01, linear_bias_zero=True)

    def __init__(self, num_classes: int, width_mult: float = 0.5) -> None:
        super().__init__()
        self.width_mult = width_mult
        self.stage_channels = tuple(int(groups[-1][1] * width_mult) for groups in _STAGE_GROUPS)
        self.stem_channels = int(_STEM_CHANNELS * width_mult)
        self.last_channels = _LAST_CHANNELS if width_mult <= 1.0 else int(_LAST_CHANNELS * width_mult)
        self.stem = conv_bn_relu(3, self.stem_channels, kernel_size=3)
        self.add_stages()
        self.final_conv = self.make_head_tail()
        self.classifier = nn.Linear(self.last_channels, num_classes)
        self.init_weights()

    def build_stage(self, index: int) -> nn.Sequential:
        if index == self.num_stages + 1:
            return inverted_residual_stage(self.stage_channels[-1], _STAGE_GROUPS[-1], self.width_mult,
                                           first_stride=1)
        in_channels = self.stem_channels if index == 1 else self.stage_channels[index - 2]
        return inverted_residual_stage(in_channels, _STAGE_GROUPS[index - 1], self.width_mult)

    def make_head_tail(self) -> nn.Module:
        return conv_bn_relu(self.stage_channels[-1], self.last_channels, kernel_size=1)

    @property
    def head_channels(self) -> int:
        return self.last_channels


@register_model
def mobilenetv2(num_classes: int) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult=0.5)
