"""What one Train job needs (``Job``), resolved once by its driver, and the checkpoint files it ships to workers.
Imports neither Ray nor torch: a job refused before it starts never loads them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Config


@dataclass(frozen=True)
class Job:
    """What one Train job needs, resolved once by its driver (``hsakd-ray teacher|distill|probe``, or a Tune trial).

    ``name``: the Train run (under ``storage``) and the MLflow run; the same name again resumes it.
    ``teacher_files``: the checkpoint the job starts from (a distill job's teacher, a probe's network), as bytes, so
    workers on any node get it through the object store. ``teacher_store``: a sweep's shared teacher outputs
    (engine/teacher_cache.StoreSettings fields). ``start_from``: another run's checkpoint (a PBT donor) used when the
    run has none of its own."""

    cfg: Config
    kind: str
    name: str
    storage: str
    teacher_files: dict[str, bytes] | None = None
    teacher_store: dict | None = None
    start_from: str | None = None

    @property
    def kept_metric(self) -> str | None:
        """The metric whose best epoch is the kept checkpoint (None: the last epoch); engine/selection.py."""
        from ..engine.selection import kept_metric

        return kept_metric(self.cfg, self.kind)


def read_checkpoint_files(path: str | Path) -> dict[str, bytes]:
    """A checkpoint directory's files, to ship to workers on any node through the object store."""
    return {p.name: p.read_bytes() for p in Path(path).iterdir() if p.is_file() and p.name != "train_state.pt"}
