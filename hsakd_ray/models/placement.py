"""The one head-placement rule (docs/method.md, "Networks"): which stages of a student carry heads, and that each
of them pairs with a teacher head at the same stage."""
from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError
from .base import resolve_aux_stages
from .registry import num_stages


class PlacementError(ConfigError):
    """A student placement the student's architecture or the teacher's heads cannot serve; ``missing`` lists the
    teacher heads it lacks (empty when the placement is out of the student's range)."""

    def __init__(self, message: str, missing: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)


def student_head_stages(student_arch: str, aux_stages: str | Sequence[int],
                        teacher_heads: Sequence[int] | None = None) -> tuple[int, ...]:
    """The student's head stages: ``all`` expanded with the STUDENT's stage count, each checked against the student's
    range, and (given ``teacher_heads``, for HSAKD's head-by-head loss) a subset of the teacher's head stages."""
    try:
        stages = resolve_aux_stages(aux_stages, num_stages(student_arch), student_arch)
    except ValueError as exc:
        raise PlacementError(str(exc)) from None
    if teacher_heads is not None:
        missing = sorted(set(stages) - set(teacher_heads))
        if missing:
            raise PlacementError(
                f"student placement {aux_stages!r} ({student_arch} heads at stages {list(stages)}) needs teacher "
                f"heads at stages {missing}, but the teacher has heads at {sorted(teacher_heads)}", missing)
    return stages
