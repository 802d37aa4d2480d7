"""``tune.share_teacher``: whether a sweep's trials share the frozen teacher's outputs (engine/teacher_cache.py),
where the store lives, and what the sweep's log and MLflow say about it afterwards."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..distill.methods import method_spec
from ..engine.teacher_cache import StoreSettings
from ..train.job_checks import is_remote_storage  # not ray_session: a refused space imports no Ray

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from .space import SearchSpace

def sharing_settings(space: SearchSpace, storage: str) -> dict | None:
    """The store's settings for every trial, or None (and why, printed once).

    ``auto`` shares when the method reads a frozen teacher (hsakd, kd) and trials run on CPUs, where the teacher's
    forward is most of a step; on GPUs it is milliseconds, which a disk read does not beat (``true`` forces it)."""
    t, method = space.tune, space.base.distill.method
    if t.share_teacher is False or not method_spec(method).needs_teacher:
        return None
    if t.share_teacher == "auto" and t.resources.gpus_per_worker > 0:
        print("teacher outputs: not shared (GPU trials; tune.share_teacher: true shares them)", flush=True)
        return None
    if is_remote_storage(storage):
        print(f"teacher outputs: not shared (ray.storage_path {storage} is not a filesystem path)", flush=True)
        return None
    root = Path(storage) / f"{space.name}-teacher-outputs"
    settings = StoreSettings(root=str(root), budget_bytes=int(t.teacher_store_gb * 2**30),
                             dtype=t.teacher_store_dtype)
    print(f"teacher outputs: shared by the trials through {root} (budget {t.teacher_store_gb:g} GiB, "
          f"{t.teacher_store_dtype})", flush=True)
    return vars(settings)


def logged_sharing(client: MlflowClient, run_id: str) -> dict[int, tuple[float, float]]:
    """Per epoch, (steps read from the store, steps) as a trial's MLflow run holds them: what a resumed driver knows
    of the epochs its trials reported before it started."""
    hits = {m.step: m.value for m in client.get_metric_history(run_id, "teacher_cache/hits")}
    computed = {m.step: m.value for m in client.get_metric_history(run_id, "teacher_cache/computed")}
    return {epoch: (h, h + computed[epoch]) for epoch, h in hits.items() if epoch in computed}


class SharingTally:
    """Per trial: steps whose teacher outputs it read from the store, of all its steps (epochs counted once)."""

    def __init__(self) -> None:
        self.trials: dict[str, dict[int, tuple[float, float]]] = {}

    def seed(self, trial_id: str, epochs: dict[int, tuple[float, float]]) -> None:
        """Epochs reported before this driver started (``logged_sharing``); results seen here take precedence."""
        if epochs:
            mine = self.trials.setdefault(trial_id, {})
            for epoch, value in epochs.items():
                mine.setdefault(epoch, value)

    def add(self, trial_id: str, result: dict) -> None:
        if "teacher_cache/hits" in result and "epoch" in result:
            hits, computed = result["teacher_cache/hits"], result["teacher_cache/computed"]
            self.trials.setdefault(trial_id, {})[int(result["epoch"])] = (hits, hits + computed)

    def trial(self, trial_id: str) -> tuple[float, float]:
        epochs = self.trials.get(trial_id, {}).values()
        return sum(h for h, _ in epochs), sum(s for _, s in epochs)

    def summary(self) -> tuple[int, int, float, float]:
        """(trials that read shared outputs, trials that reported, hits, steps)."""
        per = [self.trial(t) for t in self.trials]
        return sum(h > 0 for h, _ in per), len(per), sum(h for h, _ in per), sum(s for _, s in per)
