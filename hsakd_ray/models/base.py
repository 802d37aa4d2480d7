"""The backbone protocol, weight initialisation schemes, and the HSAKD auxiliary heads built from a backbone.

Every backbone splits into S stages and can build a fresh copy of any of its stages, so auxiliary heads are
made from the backbone's own blocks without per-architecture code (docs/method.md, "Networks").
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from torch import nn

from ..errors import ConfigError

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class InitScheme:
    """How fresh weights are drawn, as the reference's models do per architecture.

    ``conv``: "he" is He-normal with fan-out (std sqrt(2 / (k * k * out_channels))) and zero conv bias; "torch"
    keeps PyTorch's default. ``linear_std``: N(0, std) linear weights, None keeps PyTorch's default.
    ``linear_bias_zero``: zero linear bias, else PyTorch's default. BatchNorm is always weight 1, bias 0.
    """

    conv: Literal["he", "torch"] = "he"
    linear_std: float | None = None
    linear_bias_zero: bool = False

    def apply(self, module: ModuleT) -> ModuleT:
        for m in module.modules():
            if isinstance(m, nn.Conv2d) and self.conv == "he":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                if self.linear_std is not None:
                    nn.init.normal_(m.weight, 0.0, self.linear_std)
                if self.linear_bias_zero:
                    nn.init.zeros_(m.bias)
        return module


TORCH_DEFAULT = InitScheme(conv="torch")


class Backbone(nn.Module):
    """A classifier that exposes its stages: stem, stages 1..S, then pooling and a classifier (timm's shape).

    A subclass sets ``stage_channels`` (output channels of each stage), implements ``build_stage`` (stage ``index``
    as the network has it for 1..S, and for S + 1 one extra stage of the final width at stride 1; un-initialised),
    and in ``__init__`` registers ``stem``, calls ``add_stages()``, registers ``classifier`` (and ``final_conv``
    when its classifier starts with one), then ``init_weights()``. ``weight_init`` and ``head_init`` are the
    reference's schemes for the backbone and for the auxiliary heads built from it.
    """

    stage_channels: tuple[int, ...] = ()
    pre_activation: bool = False            # stage outputs not yet normalised (WRN): heads add BN + ReLU
    stage_attr: str | None = None           # None: stages in ``self.stages``; "layer": ``self.layer1..layerS``
    weight_init: InitScheme = InitScheme()
    head_init: InitScheme = InitScheme()

    def __init__(self) -> None:
        super().__init__()
        self.final_conv: nn.Module | None = None  # applied to F_S before pooling (MobileNetV2, ShuffleNetV2)

    @property
    def num_stages(self) -> int:
        return len(self.stage_channels)

    def build_stage(self, index: int) -> nn.Module:
        """Stage ``index`` (1-based) freshly built; ``S + 1`` is the last stage again, fed its own width, stride 1."""
        raise NotImplementedError

    def add_stages(self) -> None:
        """Build and register stages 1..S under the backbone's module names."""
        built = [self.build_stage(i) for i in range(1, self.num_stages + 1)]
        if self.stage_attr is None:
            self.stages = nn.ModuleList(built)
        else:
            for index, stage in enumerate(built, 1):
                setattr(self, f"{self.stage_attr}{index}", stage)

    def stage(self, index: int) -> nn.Module:
        """The backbone's stage ``index`` (1-based)."""
        return self.stages[index - 1] if self.stage_attr is None else getattr(self, f"{self.stage_attr}{index}")

    def init_weights(self) -> None:
        """Draw every weight of the backbone by ``weight_init``."""
        self.weight_init.apply(self)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem then every stage; returns the S stage outputs F_1 .. F_S."""
        x = self.forward_stem(x)
        features = []
        for index in range(1, self.num_stages + 1):
            x = self.stage(index)(x)
            features.append(x)
        return features

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        """Final conv (if any), global average pooling and the classifier, applied to F_S."""
        x = feature if self.final_conv is None else self.final_conv(feature)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def make_stage(self, index: int) -> nn.Module:
        """A copy of stage ``index`` (2..S + 1) for an auxiliary head, initialised by ``head_init``."""
        if not 2 <= index <= self.num_stages + 1:
            raise ValueError(f"make_stage index must be in 2..{self.num_stages + 1}, got {index}")
        return self.head_init.apply(self.build_stage(index))

    def make_head_tail(self) -> nn.Module:
        """What an auxiliary head applies after its stage copies, before pooling (un-initialised).

        Default: BN + ReLU for pre-activation backbones, nothing otherwise. A backbone whose classifier has a
        final conv after the last stage (MobileNetV2's 1x1 conv) returns a fresh copy of it here.
        """
        if self.pre_activation:
            return nn.Sequential(nn.BatchNorm2d(self.stage_channels[-1]), nn.ReLU(inplace=True))
        return nn.Identity()

    @property
    def head_channels(self) -> int:
        """Channels an auxiliary head pools (output of ``make_head_tail``)."""
        return self.stage_channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_stages(x)[-1])


class AuxHead(nn.Module):
    """Maps F_l to 4N joint (class x rotation) logits.

    Copies of stages l+1..S (or one extra stage after the last), the tail, pooling, a linear layer, all drawn by
    the backbone's ``head_init``.
    """

    def __init__(self, backbone: Backbone, stage: int, num_outputs: int) -> None:
        super().__init__()
        last = backbone.num_stages
        later = range(stage + 1, last + 1) if stage < last else [last + 1]
        self.blocks = nn.Sequential(*(backbone.make_stage(i) for i in later))
        self.tail = backbone.head_init.apply(backbone.make_head_tail())
        self.fc = backbone.head_init.apply(nn.Linear(backbone.head_channels, num_outputs))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.tail(self.blocks(feature))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resolve_aux_stages(aux_stages: str | Sequence[int], num_stages: int, arch: str = "") -> tuple[int, ...]:
    """Turn "all" or a list of 1-based stage indices into a sorted tuple, refusing stages the arch lacks."""
    if aux_stages == "all":
        return tuple(range(1, num_stages + 1))
    if isinstance(aux_stages, str) or not isinstance(aux_stages, Sequence):
        raise ConfigError(f"aux_stages must be 'all' or a list of stage indices, got {aux_stages!r}")
    stages = tuple(sorted(set(int(s) for s in aux_stages)))
    bad = [s for s in stages if not 1 <= s <= num_stages]
    if bad:
        name = f"{arch} has" if arch else "the network has"
        raise ConfigError(f"aux_stages {list(bad)} out of range: {name} stages 1..{num_stages}")
    return stages


class HSAKDNet(nn.Module):
    """A backbone plus auxiliary heads at ``aux_stages``; ``forward`` returns ``(logits, [q_l for each head])``."""

    def __init__(self, backbone: Backbone, num_classes: int, aux_stages: str | Sequence[int] = "all",
                 arch: str = "") -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.backbone = backbone
        self.aux_stages = resolve_aux_stages(aux_stages, backbone.num_stages, arch)
        self.heads = nn.ModuleList(AuxHead(backbone, s, 4 * num_classes) for s in self.aux_stages)
        self.detach_features = False  # frozen-backbone teacher training: heads learn, backbone stays fixed

    @property
    def num_stages(self) -> int:
        return self.backbone.num_stages

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = self.backbone.forward_stages(x)
        logits = self.backbone.forward_head(features[-1])
        aux = []
        for stage, head in zip(self.aux_stages, self.heads):
            feature = features[stage - 1]
            aux.append(head(feature.detach() if self.detach_features else feature))
        return logits, aux
