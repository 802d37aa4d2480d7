"""What one training step computes for each job kind: teacher, distill (hsakd / kd / ce), mutual and probe.

A task owns its networks, says which modules train, and turns a batch into a dict of loss parts. Plain PyTorch:
the Ray worker and the local runner call the same tasks.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import distill as D
from ..config import Config
from ..distill.methods import method_spec
from ..errors import CheckpointError, ConfigError
from ..models import HSAKDNet, build_backbone, build_model
from .checkpoint import load_network, load_pretrained_backbone
from .fastpath import chunk_rows, forward_in_chunks

Wrap = Callable[[nn.Module], nn.Module]


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


class Task:
    """Base: ``model`` is the network the job produces (possibly DDP-wrapped); ``step`` returns loss parts."""

    kind = "task"
    model: nn.Module

    @property
    def network(self) -> HSAKDNet:
        return _unwrap(self.model)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.model]

    def wrap(self, wrap: Wrap) -> None:
        self.model = wrap(self.model)

    def train(self) -> None:
        self.model.train()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        """The gradient-free part of ``step`` (a frozen teacher's forward), which may run ahead on another thread
        and is then passed to ``step(x, y, prepared)``. None: the task has no such part."""
        return None

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

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x_rot, joint = D.rotate_batch(x, y)
        logits, aux = self.model(x_rot)
        return D.teacher_loss(logits, aux, y, joint)


class DistillTask(Task):
    """A student learning from a frozen teacher: ``hsakd`` (rotations + heads), ``kd`` (Hinton) or ``ce`` (alone)."""

    kind = "distill"

    def __init__(self, student: HSAKDNet, teacher: HSAKDNet | None, cfg: Config) -> None:
        self.model, self.teacher, self.cfg = student, teacher, cfg.distill
        self.method = method_spec(cfg.distill.method)
        self.inference_mode, self.cpu_chunk_rows = cfg.train.inference_mode, cfg.train.cpu_chunk_rows
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.provider = None  # set by the runner when a sweep shares teacher outputs (teacher_cache.TeacherOutputs)

    def teacher_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        rows = chunk_rows(self.cpu_chunk_rows, x.device)
        if not self.inference_mode:
            with torch.no_grad():
                return forward_in_chunks(self.teacher, x, rows)
        with torch.inference_mode():
            logits, aux = forward_in_chunks(self.teacher, x, rows)
        return logits.clone(), [q.clone() for q in aux]  # normal tensors, usable in autograd

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None:
        """(student input, teacher logits, teacher head logits): the rotated batch (``hsakd``) or the batch (``kd``)."""
        if self.teacher is None or not self.method.needs_teacher:
            return None
        inputs = D.rotate_batch(x, y)[0] if self.method.rotation else x
        if self.provider is not None:
            return (inputs, *self.provider.outputs(inputs, self.teacher_forward))
        return (inputs, *self.teacher_forward(inputs))

    def step(self, x: torch.Tensor, y: torch.Tensor, prepared: tuple | None = None) -> dict[str, torch.Tensor]:
        c = self.cfg
        if not self.method.needs_teacher:
            return D.ce_loss(self.model(x)[0], y)
        inputs, t_logits, t_aux = prepared if prepared is not None else self.prepare(x, y)
        s_logits, s_aux = self.model(inputs)
        if not self.method.teacher_heads:
            return D.kd_loss(s_logits, t_logits, y, c.temperature, c.beta)
        return D.student_loss(s_logits, s_aux, t_logits, t_aux, y, temperature=c.temperature, alpha=c.alpha,
                              beta=c.beta, head_temperature=c.head_temperature, head_weights=c.head_weights)


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

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.cfg
        x_rot, joint = D.rotate_batch(x, y)
        s_logits, s_aux = self.model(x_rot)
        p_logits, p_aux = self.peer(x_rot)
        kw = dict(temperature=c.temperature, alpha=c.alpha, beta=c.beta, head_temperature=c.head_temperature)
        own = D.mutual_loss(s_logits, s_aux, p_logits, p_aux, y, joint, **kw)
        other = D.mutual_loss(p_logits, p_aux, s_logits, s_aux, y, joint, **kw)
        parts = {f"student_{k}": v for k, v in own.items()}
        parts.update({f"peer_{k}": v for k, v in other.items()})
        parts["loss"] = own["loss"] + other["loss"]
        return parts

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

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return D.ce_loss(self.model(x)[0], y)


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
