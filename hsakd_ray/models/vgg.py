"""CIFAR VGG with batch norm (RepDistiller's definitions), split into the 4 stages HSAKD attaches heads to.

The network is five conv blocks (3x3 conv + BN + ReLU each) with 2x2 max pooling between the first four, then
global average pooling and one linear layer. Following winycg/HSAKD, stage 1 is the first block (no stem),
stages 2 and 3 are pool + the second and third blocks, and stage 4 is pool + the last two blocks, which run at
the same resolution.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .base import Backbone
from .registry import register_model

_BLOCK_WIDTHS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def init_vgg_weights(module: nn.Module) -> None:
    """RepDistiller's VGG initialisation: He-normal (fan-out) convs, unit BN, N(0, 0.01) linear layers."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def vgg_stage(in_channels: int, widths: Sequence[int], downsample: bool) -> nn.Sequential:
    """Optional 2x2 max pool, then one 3x3 conv (with bias) + BN + ReLU per entry of ``widths``."""
    layers: list[nn.Module] = [nn.MaxPool2d(kernel_size=2, stride=2)] if downsample else []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        in_channels = width
    stage = nn.Sequential(*layers)
    init_vgg_weights(stage)
    return stage


class VGG(Backbone):
    """VGG-BN over five conv blocks, grouped into 4 stages as in HSAKD (see the module docstring)."""

    def __init__(self, block_widths: Sequence[Sequence[int]], num_classes: int) -> None:
        super().__init__()
        first, second, third, fourth, fifth = (tuple(widths) for widths in block_widths)
        self.stage_widths = (first, second, third, fourth + fifth)
        self.stage_channels = tuple(widths[-1] for widths in self.stage_widths)
        self.stages = nn.ModuleList(self._build_stage(i) for i in range(1, self.num_stages + 1))
        self.classifier = nn.Linear(self.stage_channels[-1], num_classes)
        init_vgg_weights(self.classifier)

    def _build_stage(self, index: int) -> nn.Sequential:
        """Stage ``index`` (1-based); ``S + 1`` is the last stage again, fed its own width and without pooling."""
        if index == self.num_stages + 1:
            return vgg_stage(self.stage_channels[-1], self.stage_widths[-1], downsample=False)
        in_channels = 3 if index == 1 else self.stage_channels[index - 2]
        return vgg_stage(in_channels, self.stage_widths[index - 1], downsample=index > 1)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward_head(self, feature: Tensor) -> Tensor:
        return self.classifier(nn.functional.adaptive_avg_pool2d(feature, 1).flatten(1))

    def make_stage(self, index: int) -> nn.Module:
        return self._build_stage(index)


@register_model("vgg8")
def vgg8(num_classes: int) -> VGG:
    return VGG(_BLOCK_WIDTHS["vgg8"], num_classes)


@register_model("vgg11")
def vgg11(num_classes: int) -> VGG:
    return VGG(_BLOCK_WIDTHS["vgg11"], num_classes)


@register_model("vgg13")
def vgg13(num_classes: int) -> VGG:
    return VGG(_BLOCK_WIDTHS["vgg13"], num_classes)


@register_model("vgg16")
def vgg16(num_classes: int) -> VGG:
    return VGG(_BLOCK_WIDTHS["vgg16"], num_classes)


@register_model("vgg19")
def vgg19(num_classes: int) -> VGG:
    return VGG(_BLOCK_WIDTHS["vgg19"], num_classes)
