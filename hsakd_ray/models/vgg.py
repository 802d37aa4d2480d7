"""CIFAR VGG with batch norm (RepDistiller's definitions), split into the 4 stages HSAKD attaches heads to.

The network is five conv blocks (3x3 conv + BN + ReLU each) with 2x2 max pooling between the first four, then
global average pooling and one linear layer. Following winycg/HSAKD, stage 1 is the first block (no stem),
stages 2 and 3 are pool + the second and third blocks, and stage 4 is pool + the last two blocks, which run at
the same resolution.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .base import TORCH_DEFAULT, Backbone, InitScheme
from .registry import register_model

_BLOCK_WIDTHS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def vgg_stage(in_channels: int, widths: Sequence[int], downsample: bool) -> nn.Sequential:
    """Optional 2x2 max pool, then one 3x3 conv (with bias) + BN + ReLU per entry of ``widths``."""
    layers: list[nn.Module] = [nn.MaxPool2d(kernel_size=2, stride=2)] if downsample else []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers)


class VGG(Backbone):
    """VGG-BN over five conv blocks, grouped into 4 stages as in HSAKD (see the module docstring).

    Backbone weights as the reference's vgg.py: He-normal convs, N(0, 0.01) linear, zero biases. Its auxiliary
    classifier defines the same initialisation but never calls it, so heads keep PyTorch's default.
    """

    weight_init = InitScheme(linear_std=0.01, linear_bias_zero=True)
    head_init = TORCH_DEFAULT

    def __init__(self, block_widths: Sequence[Sequence[int]], num_classes: int) -> None:
        super().__init__()
        first, second, third, fourth, fifth = (tuple(widths) for widths in block_widths)
        self.stage_widths = (first, second, third, fourth + fifth)
        self.stage_channels = tuple(widths[-1] for widths in self.stage_widths)
        self.stem = nn.Identity()  # stage 1 starts with the first conv block
        self.add_stages()
        self.classifier = nn.Linear(self.stage_channels[-1], num_classes)
        self.init_weights()

    def build_stage(self, index: int) -> nn.Sequential:
        """Stage ``index`` (1-based); ``S + 1`` is the last stage again, fed its own width and without pooling."""
        if index == self.num_stages + 1:
            return vgg_stage(self.stage_channels[-1], self.stage_widths[-1], downsample=False)
        in_channels = 3 if index == 1 else self.stage_channels[index - 2]
        return vgg_stage(in_channels, self.stage_widths[index - 1], downsample=index > 1)


@register_model
def vgg8(num_classes: int) -> VGG:
    return VGG(_BLOCK_WIDTHS["vgg8"], num_classes)


@register_model
def vgg11(num_classes: int) -> VGG:
    return VGG(_BLOCK_WIDTHS["vgg11"], num_classes)


@register_model
def vgg13(num_classes: int) -> VGG:
    return VGG(_BLOCK_WIDTHS["vgg13"], num_classes)


@register_model
def vgg16(num_classes: int) -> VGG:
    return VGG(_BLOCK_WIDTHS["vgg16"], num_classes)


@register_model
def vgg19(num_classes: int) -> VGG:
    return VGG(_BLOCK_WIDTHS["vgg19"], num_classes)
