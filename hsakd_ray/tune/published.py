"""The published top-1 (%) of each shipped space's teacher -> student pair (docs/method.md, "Published settings"):
the best test epoch of a run, averaged over several runs, in the reference implementation. The final stage's table
(tune/report.py) shows them beside the measured figures."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    student: float      # the student trained alone (cross-entropy): the ``ce`` baseline
    hsakd: float        # HSAKD, distilled from a frozen-backbone teacher
    hsakd_star: float   # HSAKD*, distilled from a jointly trained teacher
    epochs: int


# shipped space (search_spaces/NAME.yaml) -> its pair's published figures
PUBLISHED: dict[str, Published] = {
    "cifar100_wrn40_2_wrn16_2": Published(73.57, 77.20, 78.67, 240),
    "cifar100_wrn40_2_wrn40_1": Published(71.95, 77.00, 78.12, 240),
    "cifar100_resnet56_resnet20": Published(69.62, 72.58, 73.73, 240),
    "cifar100_resnet32x4_resnet8x4": Published(72.95, 77.26, 77.69, 240),
    "cifar100_vgg13_mobilenetv2": Published(73.51, 77.45, 79.27, 240),
    "cifar100_resnet50_mobilenetv2": Published(73.51, 78.79, 79.43, 240),
    "cifar100_wrn40_2_shufflenetv1": Published(71.74, 78.51, 80.11, 240),
    "cifar100_resnet32x4_shufflenetv2": Published(72.96, 79.93, 80.86, 240),
    "imagenet_resnet34_resnet18": Published(69.75, 72.16, 72.39, 100),
}


def published_figure(space_stem: str, method: str, teacher_mode: str | None) -> tuple[float, str] | None:
    """(figure, label) the reference published for ``method`` on the shipped space ``space_stem``: ``ce`` is the
    student alone; ``hsakd`` is HSAKD (frozen-backbone teacher) or HSAKD* (joint, or a given teacher); else None."""
    row = PUBLISHED.get(space_stem)
    if row is None:
        return None
    if method == "ce":
        return row.student, "student alone"
    if method == "hsakd":
        return (row.hsakd, "HSAKD") if teacher_mode == "frozen" else (row.hsakd_star, "HSAKD*")
    return None
