"""Distributions, schedulers and search algorithms from a validated ``SearchSpace``."""
from __future__ import annotations

from typing import Any

from ray import tune

from ..config import ConfigError
from .space import SearchSpace


def to_tune(spec: dict) -> Any:
    (kind, args), = spec.items()
    if kind == "choice":
        return tune.choice(args)
    if kind == "grid":
        return tune.grid_search(args)
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    if kind == "randint":
        return tune.randint(int(args[0]), int(args[1]))
    return tune.quniform(*args)


def param_space(space: SearchSpace) -> dict:
    """Tune's param_space: the sampled values live under ``params`` keyed by dotted config key."""
    return {"params": {key: to_tune(spec) for key, spec in space.search.items()}}


def build_trial_scheduler(space: SearchSpace):
    """Metric and mode come from TuneConfig (Tune refuses them twice)."""
    s = space.tune.scheduler
    max_t = s.max_t or space.base.train.epochs
    if s.type == "asha":
        return tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=s.grace_period,
                                             reduction_factor=s.reduction_factor)
    if s.type == "pbt":
        return tune.schedulers.PopulationBasedTraining(
            time_attr="epoch", perturbation_interval=s.perturbation_interval,
            hyperparam_mutations={"params": {key: to_tune(spec) for key, spec in s.hyperparam_mutations.items()}},
        )
    return tune.schedulers.FIFOScheduler()


def build_search_alg(space: SearchSpace, max_concurrent: int):
    t = space.tune
    if t.search_alg == "optuna":
        try:
            import optuna  # noqa: F401
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise ConfigError(
                "tune.search_alg optuna needs the optuna extra: pip install 'hsakd-ray[optuna]'") from None
        from ray.tune.search import ConcurrencyLimiter

        return ConcurrencyLimiter(OptunaSearch(seed=t.seed), max_concurrent=max_concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=t.seed, max_concurrent=max_concurrent)
