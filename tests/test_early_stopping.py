"""Schedule-aware early stopping: ASHA compares trials only where accuracy predicts the final result (after the
first lr decay of a multistep schedule, in the second half of a cosine one), for every shipped space."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hsakd_ray.config import ConfigError, OptimConfig
from hsakd_ray.engine.optim import lr_factor
from hsakd_ray.tune.searchers import build_trial_scheduler
from hsakd_ray.tune.space import earliest_rung, load_space

SPACES = sorted((Path(__file__).parent.parent / "search_spaces").glob("*.yaml"))
CIFAR = Path(__file__).parent.parent / "search_spaces" / "cifar100_resnet56_resnet20.yaml"


def asha_rungs(space) -> list[int]:
    """The epochs at which Ray's ASHAScheduler, built as a sweep builds it, decides (its bracket's rung levels)."""
    scheduler = build_trial_scheduler(space)
    return sorted(level for level, _ in scheduler._brackets[0]._rungs)


@pytest.mark.parametrize("path", [p for p in SPACES if "asha" in p.read_text()], ids=lambda p: p.stem)
def test_every_shipped_asha_space_decides_only_after_the_first_decay(path: Path) -> None:
    space = load_space(path)
    rungs = asha_rungs(space)
    assert rungs
    o, epochs = space.base.optim, space.base.train.epochs
    for rung in rungs:
        assert rung >= earliest_rung(o, epochs)[0]
        if o.schedule == "multistep":
            # the epoch just finished (1-based ``rung``) trained with a decayed lr
            assert lr_factor(rung - 1, o, epochs) < 1.0, f"{path.stem}: rung at epoch {rung} precedes the first decay"


def write(tmp_path: Path, source: Path, scheduler: dict, **base: dict) -> Path:
    raw = yaml.safe_load(source.read_text())
    raw["tune"]["scheduler"] = scheduler
    for section, values in base.items():
        raw.setdefault("base", {}).setdefault(section, {}).update(values)
    path = source.parent / "bases"  # keep base_config resolvable: write next to the shipped file's bases/
    out = tmp_path / source.name
    if "base_config" in raw:
        raw["base_config"] = str(path / Path(raw["base_config"]).name)
    out.write_text(yaml.safe_dump(raw))
    return out


def test_the_published_grace_60_on_a_240_epoch_multistep_schedule_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, CIFAR, {"type": "asha", "grace_period": 60, "reduction_factor": 2, "max_t": 240})
    with pytest.raises(ConfigError, match=r"tune\.scheduler\.grace_period 60 .* allowed: grace_period >= 151 "
                                          r"\(a rung after the first lr decay \(optim\.milestones 150\)\)"):
        load_space(path)


def test_a_searched_schedule_is_checked_too(tmp_path: Path) -> None:
    path = write(tmp_path, CIFAR, {"type": "asha", "grace_period": 160, "reduction_factor": 2, "max_t": 240})
    raw = yaml.safe_load(path.read_text())
    raw["search"]["optim.milestones"] = {"choice": [[150, 180, 210], [200, 220, 230]]}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="grace_period >= 201"):
        load_space(path)


def test_fifo_and_pbt_are_not_early_stopping(tmp_path: Path) -> None:
    load_space(write(tmp_path, CIFAR, {"type": "fifo", "grace_period": 1}))


@pytest.mark.parametrize("optim, epochs, first", [
    (OptimConfig(schedule="multistep", milestones=[150, 180, 210]), 240, 151),
    (OptimConfig(schedule="multistep", milestones=[30, 60, 90]), 100, 31),
    (OptimConfig(schedule="multistep", milestones=[300]), 240, 1),        # no decay inside the run: constant
    (OptimConfig(schedule="cosine", milestones=[]), 240, 120),            # half the span trained
    (OptimConfig(schedule="cosine", milestones=[], warmup_epochs=5), 15, 10),
    (OptimConfig(schedule="constant", milestones=[]), 240, 1),
    (OptimConfig(schedule="constant", milestones=[], warmup_epochs=3), 240, 4),
])
def test_earliest_rung_per_schedule(optim: OptimConfig, epochs: int, first: int) -> None:
    assert earliest_rung(optim, epochs)[0] == first
    if optim.schedule == "cosine":
        # the next epoch trains at half the peak lr or less; the epoch before the rung still above half
        assert lr_factor(first, optim, epochs) <= 0.5 + 1e-9 < lr_factor(first - 1, optim, epochs)
