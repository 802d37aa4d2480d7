"""torchvision's ImageNet ResNets as HSAKD backbones: same module names, so torchvision state dicts load strictly.

Pooling is adaptive, so inputs from 16x16 px upward work.
"""
from __future__ import annotations

from torchvision.models.resnet import BasicBlock, Bottleneck

from .registry import register_model
from .resnet_cifar import ResNet

IMAGENET_WIDTHS = (64, 128, 256, 512)


@register_model
def resnet18_imagenet(num_classes: int) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), IMAGENET_WIDTHS, 64, num_classes, imagenet_stem=True)


@register_model
def resnet34_imagenet(num_classes: int) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), IMAGENET_WIDTHS, 64, num_classes, imagenet_stem=True)


@register_model
def resnet50_imagenet(num_classes: int) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), IMAGENET_WIDTHS, 64, num_classes, imagenet_stem=True)
