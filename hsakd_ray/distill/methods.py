"""The table of distillation methods: what each needs and computes (docs/method.md). Every layer asks it (config
validation, the engine's tasks, the Ray job driver, the search space and the sweep) instead of testing names."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    needs_teacher: bool   # distils from a trained teacher checkpoint (frozen during the job)
    trains_peer: bool     # a peer of teacher.arch learns alongside the student, from scratch (no checkpoint)
    rotation: bool        # the student sees the 4-rotation batch
    student_heads: bool   # the student keeps its auxiliary heads (student.aux_stages)
    teacher_heads: bool   # each student head learns from the teacher's head at the same stage (placement must pair)
    loss: str             # the loss function in distill/losses.py
    tunable: bool         # ``hsakd-ray tune`` can search it (its trials share one teacher, or need none)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("hsakd", needs_teacher=True, trains_peer=False, rotation=True, student_heads=True, teacher_heads=True,
           loss="student_loss", tunable=True),
    Method("kd", needs_teacher=True, trains_peer=False, rotation=False, student_heads=False, teacher_heads=False,
           loss="kd_loss", tunable=True),
    Method("ce", needs_teacher=False, trains_peer=False, rotation=False, student_heads=False, teacher_heads=False,
           loss="ce_loss", tunable=True),
    Method("mutual", needs_teacher=False, trains_peer=True, rotation=True, student_heads=True, teacher_heads=False,
           loss="mutual_loss", tunable=False),
)}


def method_spec(name: str) -> Method:
    """The row of ``name`` (config validation has already refused unknown names)."""
    return METHODS[name]
