"""The job kinds: teacher, distill (hsakd / kd / ce), mutual and probe.

A task owns its networks, says which modules train and what is saved, and runs its kind's step from engine/step.py
(where each step reads top to bottom). Plain PyTorch: the Ray worker and the local runner call the same tasks.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn

from .. import distill as D
from ..config import Config
from ..distill.methods import method_spec
from ..errors import CheckpointError, ConfigError
from ..models import HSAKDNet, build_backbone, build_model
from .checkpoint import load_network, load_pretrained_backbone
from .step import Autocast, Outputs, Parts, TeacherFn, ce_step, hsakd_step, kd_step, mutual_step, teacher_step
from .threads import chunk_rows, forward_in_chunks

if TYPE_CHECKING:
    from .teacher_cache import TeacherOutputs

Wrap = Callable[[nn.Module], nn.Module]


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


class Task:
    """Base: ``model`` is the network the job produces (possibly DDP-wrapped); ``step`` trains one batch and returns
    its loss parts. ``teacher_outputs``: the frozen teacher's outputs, for tasks that distil from one (else None)."""

    kind = "task"
    model: nn.Module
    teacher_outputs: TeacherFn | None = None

    @property
    def network(self) -> HSAKDNet:
        return _unwrap(self.model)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.model]

    def wrap(self, wrap: Wrap) -> None:
        self.model = wrap(self.model)

    def train(self) -> None:
        self.model.train()

    def step(self, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, teacher: TeacherFn | None = None,
             autocast: Autocast = nullcontext) -> Parts:
        """One training step on the batch (engine/step.py); ``teacher`` replaces ``teacher_outputs`` for it."""
        raise NotImplementedError

    def teacher_views(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The rows the frozen teacher sees in this task's step (computed ahead of the step by the look-ahead)."""
        return x

    def networks_to_evaluate(self) -> dict[str, HSAKDNet]:
        """Networks whose test metrics are reported, by metric prefix ("" is the main one)."""
        return {"": self.network}

    def state_dicts(self) -> dict[str, dict]:
        return {"model": self.network.state_dict()}

    def load_state_dicts(self, states: dict[str, dict]) -> None:
        self.network.load_state_dict(states["model"])


class TeacherTask(Task):
    """Backbone + heads trained on the augmented batch; in frozen mode only the heads learn."""

    kind = "teacher"

    def __init__(self, net: HSAKDNet, frozen: bool = False) -> None:
        self.model, self.frozen = net, frozen
        if frozen:
            net.detach_features = True
            net.backbone.requires_grad_(False)

    def train(self) -> None:
        self.model.train()
        if self.frozen:
            self.network.backbone.eval()  # BN statistics of the pretrained backbone stay fixed

    def step(self, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, teacher: TeacherFn | None = None,
             autocast: Autocast = nullcontext) -> Parts:
        return teacher_step(self.model, optimizer, x, y, autocast)


class DistillTask(Task):
    """A student learning from a frozen teacher: ``hsakd`` (rotations + heads), ``kd`` (Hinton) or ``ce`` (alone)."""

    kind = "distill"

    def __init__(self, student: HSAKDNet, teacher: HSAKDNet | None, cfg: Config) -> None:
        self.model, self.teacher, self.cfg = student, teacher, cfg.distill
        self.method = method_spec(cfg.distill.method)
        self.inference_mode, self.cpu_chunk_rows = cfg.train.inference_mode, cfg.train.cpu_chunk_rows
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        if teacher is not None and self.method.needs_teacher:
            self.teacher_outputs = self.teacher_forward

    def teacher_forward(self, x: torch.Tensor) -> Outputs:
        """The frozen teacher's forward, under inference mode (else no_grad), in chunks on CPU (``cpu_chunk_rows``)."""
        rows = chunk_rows(self.cpu_chunk_rows, x.device)
        if not self.inference_mode:
            with torch.no_grad():
                return forward_in_chunks(self.teacher, x, rows)
        with torch.inference_mode():
            logits, aux = forward_in_chunks(self.teacher, x, rows)
        return logits.clone(), [q.clone() for q in aux]  # normal tensors, usable in autograd

    def share_teacher(self, provider: TeacherOutputs) -> None:
        """Take the teacher's outputs from a sweep's shared store (``teacher_cache.TeacherOutputs``): read when
        another trial computed them, else computed here by ``teacher_forward`` (and published)."""
        compute = self.teacher_forward
        self.teacher_outputs = lambda views: provider.outputs(views, compute)

    def teacher_views(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The rows the teacher sees in this method's step: the 4-rotation batch (``hsakd``) or the batch (``kd``)."""
        return D.rotate_batch(x, y)[0] if self.method.rotation else x

    def step(self, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, teacher: TeacherFn | None = None,
             autocast: Autocast = nullcontext) -> Parts:
        """This method's step (engine/step.py): ``hsakd_step``, ``kd_step`` or ``ce_step``."""
        teacher = self.teacher_outputs if teacher is None else teacher
        if self.method.teacher_heads:
            return hsakd_step(self.model, teacher, optimizer, x, y, self.cfg, autocast)
        if self.method.needs_teacher:
            return kd_step(self.model, teacher, optimizer, x, y, self.cfg, autocast)
        return ce_step(self.model, optimizer, x, y, autocast)


class MutualTask(Task):
    """Online mutual HSAKD: the student and a peer (the teacher arch) learn from each other from scratch."""

    kind = "mutual"

    def __init__(self, student: HSAKDNet, peer: HSAKDNet, cfg: Config) -> None:
        self.model, self.peer, self.cfg = student, peer, cfg.distill

    def trainable_modules(self) -> list[nn.Module]:
        return [self.model, self.peer]

    def wrap(self, wrap: Wrap) -> None:
        self.model, self.peer = wrap(self.model), wrap(self.peer)

    def train(self) -> None:
        self.model.train()
        self.peer.train()

    def step(self, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, teacher: TeacherFn | None = None,
             autocast: Autocast = nullcontext) -> Parts:
        return mutual_step(self.model, self.peer, optimizer, x, y, self.cfg, autocast)

    def networks_to_evaluate(self) -> dict[str, HSAKDNet]:
        return {"": self.network, "peer_": _unwrap(self.peer)}

    def state_dicts(self) -> dict[str, dict]:
        return {"model": self.network.state_dict(), "peer": _unwrap(self.peer).state_dict()}

    def load_state_dicts(self, states: dict[str, dict]) -> None:
        self.network.load_state_dict(states["model"])
        _unwrap(self.peer).load_state_dict(states["peer"])


def replace_classifier(net: HSAKDNet, num_classes: int) -> nn.Linear:
    """Swap the backbone's final linear layer for a fresh one with ``num_classes`` outputs, initialised as the
    architecture initialises its own classifier (eval_rep.py builds a fresh model and loads all but its
    classifier); returns it."""
    name = [n for n, m in net.backbone.named_modules() if isinstance(m, nn.Linear)][-1]
    parent_name, _, attr = name.rpartition(".")
    parent = net.backbone.get_submodule(parent_name) if parent_name else net.backbone
    old = getattr(parent, attr)
    fc = build_backbone(net.arch, num_classes).get_submodule(name) if net.arch else nn.Linear(old.in_features,
                                                                                              num_classes)
    setattr(parent, attr, fc)
    net.num_classes = num_classes
    return fc


class ProbeTask(Task):
    """Linear probe: a fresh linear classifier trained on the frozen features of a trained network."""

    kind = "probe"

    def __init__(self, net: HSAKDNet, num_classes: int) -> None:
        net.requires_grad_(False)
        replace_classifier(net, num_classes).requires_grad_(True)
        self.model = net

    def train(self) -> None:
        self.model.eval()  # frozen features: BN keeps its statistics; only the classifier's weights move

    def step(self, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, teacher: TeacherFn | None = None,
             autocast: Autocast = nullcontext) -> Parts:
        return ce_step(self.model, optimizer, x, y, autocast)


def require_inputs(kind: str, cfg: Config) -> None:
    """What a job needs besides its data, asked before it starts (and again when its task is built)."""
    if kind not in ("teacher", "distill", "probe"):
        raise ConfigError(f"unknown job kind {kind!r}; allowed: teacher, distill, probe")
    if kind == "teacher" and cfg.teacher.mode == "frozen" and not cfg.teacher.pretrained:
        raise ConfigError("teacher.mode 'frozen' needs teacher.pretrained (backbone weights to keep fixed)")
    if kind == "probe" and not cfg.student.checkpoint:
        raise ConfigError("a probe job needs student.checkpoint: the network whose features are probed")
    method = method_spec(cfg.distill.method)
    if kind == "distill" and method.needs_teacher and not cfg.teacher.checkpoint:
        raise ConfigError(f"distill.method {method.name!r} needs teacher.checkpoint (a trained teacher: a checkpoint "
                          "directory, runs:/RUN_ID/checkpoint or models:/NAME/VERSION)")


def build_task(kind: str, cfg: Config, num_classes: int) -> Task:
    """The task for a ``teacher``, ``distill`` or ``probe`` job (``distill`` with method ``mutual`` -> MutualTask)."""
    require_inputs(kind, cfg)
    if kind == "teacher":
        t = cfg.teacher
        net = build_model(t.arch, num_classes, t.aux_stages)
        if t.pretrained:
            load_pretrained_backbone(net, t.pretrained)
        return TeacherTask(net, frozen=t.mode == "frozen")
    if kind == "probe":
        return ProbeTask(load_network(cfg.student.checkpoint, cfg.student.arch, [], role="student"), num_classes)
    method, s = method_spec(cfg.distill.method), cfg.student
    if method.trains_peer:
        student = build_model(s.arch, num_classes, s.aux_stages)
        return MutualTask(student, build_model(cfg.teacher.arch, num_classes, student.aux_stages), cfg)
    student = build_model(s.arch, num_classes, s.aux_stages if method.student_heads else [])
    teacher = None
    if method.needs_teacher:
        teacher = load_network(cfg.teacher.checkpoint, cfg.teacher.arch,
                               student.aux_stages if method.teacher_heads else [], student_arch=s.arch)
        if teacher.num_classes != num_classes:
            raise CheckpointError(f"teacher checkpoint has {teacher.num_classes} classes, the data has {num_classes}")
    return DistillTask(student, teacher, cfg)
