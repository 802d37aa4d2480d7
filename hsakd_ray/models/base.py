"""The backbone protocol and the HSAKD auxiliary heads built from it.

Every backbone splits into S stages and can build a fresh copy of any of its stages, so auxiliary heads are
made from the backbone's own blocks without per-architecture code (HSAKD.md section 2).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Backbone(nn.Module):
    """A classifier that exposes its stages.

    Subclasses set ``stage_channels`` (output channels of each stage, in order), ``pre_activation`` (True when
    stage outputs are not yet normalised, as in WRN, so heads add BN + ReLU before pooling) and implement
    ``forward_stages``, ``forward_head`` and ``make_stage``.
    """

    stage_channels: tuple[int, ...] = ()
    pre_activation: bool = False

    @property
    def num_stages(self) -> int:
        return len(self.stage_channels)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem then every stage; returns the S stage outputs F_1 .. F_S."""
        raise NotImplementedError

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        """Final pooling and classifier applied to F_S."""
        raise NotImplementedError

    def make_stage(self, index: int) -> nn.Module:
        """A freshly initialised copy of stage ``index`` (1-based, 2..S).

        ``index == S + 1`` asks for one extra stage of the final width at stride 1 (input and output width
        ``stage_channels[-1]``), used by the head after the last stage.
        """
        raise NotImplementedError

    def make_head_tail(self) -> nn.Module:
        """What an auxiliary head applies after its stage copies, before pooling.

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

    Copies of stages l+1..S (or one extra stage after the last), the tail, pooling, a linear layer.
    """

    def __init__(self, backbone: Backbone, stage: int, num_outputs: int) -> None:
        super().__init__()
        last = backbone.num_stages
        later = range(stage + 1, last + 1) if stage < last else [last + 1]
        self.blocks = nn.Sequential(*(backbone.make_stage(i) for i in later))
        self.tail = backbone.make_head_tail()
        self.fc = nn.Linear(backbone.head_channels, num_outputs)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.tail(self.blocks(feature))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resolve_aux_stages(aux_stages: str | Sequence[int], num_stages: int, arch: str = "") -> tuple[int, ...]:
    """Turn "all" or a list of 1-based stage indices into a sorted tuple, refusing stages the arch lacks."""
    if aux_stages == "all":
        return tuple(range(1, num_stages + 1))
    if isinstance(aux_stages, str) or not isinstance(aux_stages, Sequence):
        raise ValueError(f"aux_stages must be 'all' or a list of stage indices, got {aux_stages!r}")
    stages = tuple(sorted(set(int(s) for s in aux_stages)))
    bad = [s for s in stages if not 1 <= s <= num_stages]
    if bad:
        name = f"{arch} has" if arch else "the network has"
        raise ValueError(f"aux_stages {list(bad)} out of range: {name} stages 1..{num_stages}")
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
