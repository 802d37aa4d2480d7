"""Model zoo: backbones register themselves on import; ``build_model`` adds HSAKD auxiliary heads."""
from . import mobilenetv2, resnet_cifar, resnet_imagenet, shufflenet, vgg, wrn  # noqa: F401  (registration)
from .base import AuxHead, Backbone, HSAKDNet, resolve_aux_stages
from .placement import PlacementError, student_head_stages
from .registry import build_backbone, build_model, list_architectures, num_stages, register_model

__all__ = [
    "AuxHead", "Backbone", "HSAKDNet", "build_backbone", "build_model", "list_architectures", "num_stages",
    "PlacementError", "register_model", "resolve_aux_stages", "student_head_stages",
]
