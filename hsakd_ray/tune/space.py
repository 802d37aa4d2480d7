"""Search-space YAML: a base config, a teacher (reference or config trained once), a ``search`` mapping of dotted
config keys to distributions, and a ``tune`` section. Everything is validated before any trial starts."""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (
    Config,
    ConfigError,
    OptimConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    flatten,
    read_yaml,
    set_dotted,
)
from ..distill.methods import METHODS, method_spec

DISTRIBUTIONS = {"choice": None, "grid": None, "uniform": 2, "loguniform": 2, "randint": 2, "quniform": 3}
SCHEDULERS = ("fifo", "asha", "pbt")
SEARCH_ALGS = ("random", "grid", "optuna")
PBT_MUTABLE = ("distill.temperature", "distill.head_temperature", "distill.alpha", "distill.beta", "optim.lr")


@dataclass
class SchedulerSpec:
    type: str = "fifo"
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int | None = None                # default: train.epochs
    perturbation_interval: int = 2          # pbt: epochs between exploit/explore
    hyperparam_mutations: dict[str, dict] = field(default_factory=dict)  # pbt: dotted key -> distribution


@dataclass
class ResourceSpec:
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


FINAL_BASELINES = ("ce", "kd")  # tune.final.baselines: the plain student and classic KD


@dataclass
class FinalSpec:
    """The final stage after the sweep (tune/final_runs.py): the best config on the whole training set, per seed."""
    run: bool = True                        # false (or --no-final): stop at best_config.yaml
    seeds: int = 1                          # runs per method, seeds train.seed, train.seed + 1, ...
    baselines: list[str] = field(default_factory=list)  # ce, kd: the same student, epochs and seeds


@dataclass
class TuneSpec:
    metric: str | None = None               # default: val/top1 (the carved validation split)
    mode: str = "max"
    num_samples: int = 1
    max_concurrent_trials: int | None = None  # default: what the cluster fits
    time_budget_s: float | None = None
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    search_alg: str = "random"
    seed: int = 0
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    name: str | None = None                 # experiment name (Ray + MLflow parent run); default: the file's stem
    top_k: int = 5                          # rows of the printed results table
    share_teacher: str | bool = "auto"      # trials share the frozen teacher's outputs (tune/sharing.py)
    teacher_store_gb: float = 8.0           # disk budget of the shared outputs; past it trials compute their own
    teacher_store_dtype: str = "float32"    # float32: exact; bfloat16: half the bytes, outputs rounded to bf16
    final: FinalSpec = field(default_factory=FinalSpec)


@dataclass
class SearchSpace:
    path: Path
    base: Config
    teacher_ref: str | None                 # checkpoint path / runs:/ / models:/, or None when teacher_config
    teacher_config: Config | None           # trained once before the trials
    search: dict[str, dict]
    tune: TuneSpec
    final_teacher_ref: str | None = None    # the final run's teacher, when given (else trained on all the data)

    @property
    def name(self) -> str:
        return self.tune.name or self.path.stem


def _spec_from(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix} must be a mapping, got {raw!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"unknown key {prefix}.{unknown[0]}; allowed: {', '.join(names)}")
    values = {}
    for key, value in raw.items():
        if key == "scheduler":
            value = _spec_from(SchedulerSpec, value, f"{prefix}.scheduler")
        elif key == "resources":
            value = _spec_from(ResourceSpec, value, f"{prefix}.resources")
        elif key == "final":
            value = _spec_from(FinalSpec, value, f"{prefix}.final")
        values[key] = value
    return dataclasses.replace(cls(), **values)


def check_distribution(key: str, spec: Any, where: str = "search") -> None:
    """``{choice: [...]}``, ``{grid: [...]}``, ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``,
    ``{randint: [lo, hi]}`` or ``{quniform: [lo, hi, q]}``."""
    allowed = ", ".join(DISTRIBUTIONS)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}.{key} must be one distribution like {{choice: [...]}}; allowed: {allowed}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}.{key}: unknown distribution {kind!r}; allowed: {allowed}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}.{key}: {kind} needs a non-empty list, got {args!r}")
    arity = DISTRIBUTIONS[kind]
    if arity is not None:
        if len(args) != arity or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            shape = "[lo, hi, q]" if arity == 3 else "[lo, hi]"
            raise ConfigError(f"{where}.{key}: {kind} needs {shape} numbers, got {args!r}")
        if args[0] >= args[1]:
            raise ConfigError(f"{where}.{key}: {kind} needs lo < hi, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"{where}.{key}: loguniform needs lo > 0, got {args!r}")


def distribution_values(spec: dict) -> list:
    """Representative values of a distribution, to validate each against the config schema."""
    (kind, args), = spec.items()
    if kind in ("choice", "grid"):
        return list(args)
    if kind == "randint":
        return [int(args[0]), int(args[1]) - 1]
    return [args[0], args[1]]


def apply_params(base: dict, params: dict[str, Any]) -> dict:
    raw = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(raw, key.split("."), value)
    return raw


def _validate_search(search: dict, base_raw: dict, teacher_stages: list[int] | None) -> None:
    """Every key is a config key, every distribution well formed, every representative value fits the config, and
    every student placement pairs with the teacher's heads (when the teacher is a config, before it trains)."""
    for key, spec in search.items():
        if not isinstance(key, str) or "." not in key:
            raise ConfigError(f"search key {key!r} must be a dotted config key such as distill.temperature")
        check_distribution(key, spec)
        for value in distribution_values(spec):
            try:
                cfg = config_from_dict(apply_params(base_raw, {key: value}))
            except ConfigError as exc:
                raise ConfigError(f"search.{key}: value {value!r} does not fit the config: {exc}") from None
            if key == "student.aux_stages":
                check_placement(cfg, teacher_stages, "search.student.aux_stages")
    if "student.aux_stages" not in search:
        check_placement(config_from_dict(base_raw), teacher_stages, "student.aux_stages")


TEACHER_CONFIG_PREFIX = "teacher.config."  # --set teacher.config.SECTION.KEY=VALUE sets the teacher the sweep trains


def merge_sections(raw: dict, sections: Any, where: str) -> dict:
    """``raw`` with each section of ``sections`` (a mapping of config sections) merged over its own."""
    if not isinstance(sections, dict) or not all(isinstance(v, dict) or v is None for v in sections.values()):
        raise ConfigError(f"{where} must map config sections to mappings, e.g. {{train: {{epochs: 100}}}}")
    out = apply_params(raw, {})
    for section, values in sections.items():
        out[section] = {**(out.get(section) or {}), **(values or {})}
    return out


def teacher_config(base_raw: dict, sections: Any, frozen: Any, overrides: list[str]) -> Config:
    """The teacher the sweep trains once: the base config, then the space's ``teacher.config`` sections, then, for a
    ``teacher.mode: frozen`` teacher, the space's ``teacher.frozen`` sections (the CIFAR spaces give the reference's
    frozen-backbone schedule there: 100 epochs, decays at 30/60/90), then ``--set teacher.config.*``."""
    raw = merge_sections(base_raw, sections or {}, "teacher.config")
    sets = [o.strip().removeprefix(TEACHER_CONFIG_PREFIX) for o in overrides]
    cfg = config_from_dict(apply_overrides(raw, sets))
    if frozen is not None:
        as_frozen = config_from_dict(apply_overrides(merge_sections(raw, frozen, "teacher.frozen"), sets))
        cfg = as_frozen if cfg.teacher.mode == "frozen" else cfg  # (as_frozen checks the sections in either mode)
    if cfg.teacher.mode == "frozen" and not cfg.teacher.pretrained:
        raise ConfigError("teacher.config.teacher.pretrained: a mode: frozen teacher keeps a trained backbone; give "
                          "its weights (a state dict file, or a folder from hsakd-ray import)")
    return cfg


def check_placement(cfg: Config, teacher_stages: Sequence[int] | None, where: str) -> None:
    """HSAKD pairs every student head with the teacher head at its stage: the one rule, ``student_head_stages``."""
    from ..models import PlacementError, student_head_stages

    if not method_spec(cfg.distill.method).teacher_heads:
        return
    try:
        student_head_stages(cfg.student.arch, cfg.student.aux_stages, teacher_stages)
    except PlacementError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_space(path: str | Path, overrides: list[str] = ()) -> SearchSpace:
    """Parse and validate a search-space file (``--set`` overrides apply to the base config)."""
    from ..models import num_stages, resolve_aux_stages

    path = Path(path)
    raw = read_yaml(path)
    allowed = ("base", "base_config", "teacher", "search", "tune")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {path}; allowed: {', '.join(allowed)}")
    base_raw = read_yaml(path.parent / raw["base_config"]) if raw.get("base_config") else {}
    base_raw = apply_params(base_raw, {})
    for section, values in (raw.get("base") or {}).items():
        merged = dict(base_raw.get(section) or {})
        merged.update(values or {})
        base_raw[section] = merged
    teacher_sets = [o for o in overrides if o.strip().startswith(TEACHER_CONFIG_PREFIX)]
    base_raw = apply_overrides(base_raw, [o for o in overrides if o not in teacher_sets])
    base_raw.setdefault("data", {})
    if not base_raw["data"].get("val_fraction"):
        base_raw["data"]["val_fraction"] = 0.1  # docs/method.md, "Tuning protocol": tune on a held-out split
    base = config_from_dict(base_raw)
    if not method_spec(base.distill.method).tunable:
        tunable = ", ".join(m.name for m in METHODS.values() if m.tunable)
        raise ConfigError(f"distill.method {base.distill.method!r} trains no shared teacher; tune {tunable}")

    teacher = raw.get("teacher")
    teacher_ref, teacher_cfg, teacher_stages = None, None, None
    if isinstance(teacher, str):
        teacher_ref = teacher
    elif isinstance(teacher, dict) and set(teacher) <= {"checkpoint", "config", "frozen", "final_checkpoint"} and \
            len(set(teacher) & {"checkpoint", "config"}) == 1 and ("frozen" not in teacher or "config" in teacher):
        if "checkpoint" in teacher:
            teacher_ref = str(teacher["checkpoint"])
        else:
            try:
                teacher_cfg = teacher_config(base_raw, teacher["config"], teacher.get("frozen"), teacher_sets)
            except ConfigError as exc:
                message = str(exc)
                raise ConfigError(message if message.startswith("teacher.") else f"teacher: {message}") from None
            t = teacher_cfg.teacher
            teacher_stages = list(resolve_aux_stages(t.aux_stages, num_stages(t.arch), t.arch))
    elif method_spec(base.distill.method).needs_teacher or teacher is not None:
        raise ConfigError("teacher must be a checkpoint reference (path, runs:/..., models:/...) "
                          "or a mapping {checkpoint: REF} or {config: {teacher: ..., train: ...}} (with frozen: "
                          "{train: ..., optim: ...}, the sections a mode: frozen teacher uses instead), "
                          "optionally with final_checkpoint: REF (the final run's teacher)")
    if teacher_sets and teacher_cfg is None:
        raise ConfigError(f"--set {teacher_sets[0].split('=', 1)[0].strip()}: this space's teacher is a checkpoint "
                          "reference, not a config; teacher.config.* keys set a teacher the sweep trains")
    if teacher_ref and base.teacher.checkpoint is None:
        base.teacher.checkpoint = teacher_ref

    search = raw.get("search") or {}
    if not isinstance(search, dict) or not search:
        raise ConfigError(f"{path}: search must map dotted config keys to distributions")
    _validate_search(search, config_to_dict(base), teacher_stages)
    tune = _spec_from(TuneSpec, raw.get("tune"), "tune")
    _validate_tune(tune, base, search)
    check_early_stopping(tune.scheduler, base, search)
    final_ref = teacher.get("final_checkpoint") if isinstance(teacher, dict) else None
    if final_ref is not None and not isinstance(final_ref, str):
        raise ConfigError(f"teacher.final_checkpoint must be a checkpoint reference (path, runs:/, models:/), "
                          f"got {final_ref!r}")
    return SearchSpace(path=path, base=base, teacher_ref=teacher_ref, teacher_config=teacher_cfg,
                       search=search, tune=tune, final_teacher_ref=final_ref)


SHARE_VALUES = ("auto", True, False)  # tune.share_teacher (sharing.py)
STORE_DTYPES = ("float32", "bfloat16")  # tune.teacher_store_dtype


def check_sharing(t: TuneSpec) -> None:
    if t.share_teacher not in SHARE_VALUES:
        raise ConfigError(f"tune.share_teacher must be auto, true or false, got {t.share_teacher!r}")
    if not isinstance(t.teacher_store_gb, (int, float)) or isinstance(t.teacher_store_gb, bool) \
            or t.teacher_store_gb < 0:
        raise ConfigError(f"tune.teacher_store_gb must be a number >= 0, got {t.teacher_store_gb!r}")
    if t.teacher_store_dtype not in STORE_DTYPES:
        raise ConfigError(f"tune.teacher_store_dtype must be one of {', '.join(STORE_DTYPES)}, "
                          f"got {t.teacher_store_dtype!r}")


def check_final(final: FinalSpec) -> None:
    if not isinstance(final.run, bool):
        raise ConfigError(f"tune.final.run must be true or false, got {final.run!r}")
    if not isinstance(final.seeds, int) or isinstance(final.seeds, bool) or final.seeds < 1:
        raise ConfigError(f"tune.final.seeds must be an integer >= 1, got {final.seeds!r}")
    if not isinstance(final.baselines, list) or not set(final.baselines) <= set(FINAL_BASELINES) \
            or len(set(final.baselines)) != len(final.baselines):
        raise ConfigError(f"tune.final.baselines must list distinct methods of {', '.join(FINAL_BASELINES)}, "
                          f"got {final.baselines!r}")


def check_number(value: Any, key: str, lo: float, *, integer: bool = False, lo_open: bool = False,
                 optional: bool = False) -> None:
    """``value`` is a number (an integer with ``integer``) >= ``lo`` (> with ``lo_open``), or None if ``optional``."""
    if value is None and optional:
        return
    kind = (int,) if integer else (int, float)
    if not isinstance(value, kind) or isinstance(value, bool) or (value <= lo if lo_open else value < lo) \
            or (not integer and not math.isfinite(value)):
        what = "an integer" if integer else "a number"
        bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise ConfigError(f"{key} must be {what} {bound}{' or null' if optional else ''}, got {value!r}")


def _check_numbers(tune: TuneSpec) -> None:
    """The ``tune`` numbers Ray would refuse (or take wrongly) only once trials start, refused here."""
    s, r = tune.scheduler, tune.resources
    check_number(tune.num_samples, "tune.num_samples", 1, integer=True)
    check_number(tune.max_concurrent_trials, "tune.max_concurrent_trials", 1, integer=True, optional=True)
    check_number(tune.time_budget_s, "tune.time_budget_s", 0, lo_open=True, optional=True)
    check_number(tune.seed, "tune.seed", 0, integer=True)
    check_number(tune.top_k, "tune.top_k", 1, integer=True)
    check_number(s.grace_period, "tune.scheduler.grace_period", 1, integer=True)
    check_number(s.reduction_factor, "tune.scheduler.reduction_factor", 1, lo_open=True)
    check_number(s.max_t, "tune.scheduler.max_t", 1, integer=True, optional=True)
    check_number(s.perturbation_interval, "tune.scheduler.perturbation_interval", 1, integer=True)
    check_number(r.num_workers, "tune.resources.num_workers", 1, integer=True)
    check_number(r.cpus_per_worker, "tune.resources.cpus_per_worker", 0, lo_open=True)
    check_number(r.gpus_per_worker, "tune.resources.gpus_per_worker", 0)


def _validate_tune(tune: TuneSpec, base: Config, search: dict) -> None:
    _check_numbers(tune)
    check_sharing(tune)
    check_final(tune.final)
    s = tune.scheduler
    if s.type not in SCHEDULERS:
        raise ConfigError(f"tune.scheduler.type {s.type!r} is unknown; allowed: {', '.join(SCHEDULERS)}")
    if tune.search_alg not in SEARCH_ALGS:
        raise ConfigError(f"tune.search_alg {tune.search_alg!r} is unknown; allowed: {', '.join(SEARCH_ALGS)}")
    if tune.mode not in ("max", "min"):
        raise ConfigError(f"tune.mode must be max or min, got {tune.mode!r}")
    if tune.search_alg == "grid":
        not_grid = [k for k, spec in search.items() if "grid" not in spec]
        if not_grid:
            raise ConfigError(f"tune.search_alg grid needs grid distributions; search.{not_grid[0]} is not one")
    for key, spec in s.hyperparam_mutations.items():
        if key not in PBT_MUTABLE:
            raise ConfigError(f"tune.scheduler.hyperparam_mutations.{key}: PBT can mutate only "
                              f"{', '.join(PBT_MUTABLE)}")
        check_distribution(key, spec, "tune.scheduler.hyperparam_mutations")
    if s.type == "pbt" and not s.hyperparam_mutations:
        raise ConfigError("tune.scheduler.type pbt needs tune.scheduler.hyperparam_mutations")
    r = tune.resources
    if 0 < r.gpus_per_worker < 1 and r.num_workers > 1:
        raise ConfigError("tune.resources.gpus_per_worker < 1 (fractional GPUs) works only with num_workers: 1 "
                          "(multi-worker NCCL on a shared GPU fails, Ray issue 48012)")


SCHEDULE_KEYS = ("optim.schedule", "optim.milestones", "optim.warmup_epochs", "train.epochs")


def earliest_rung(optim: OptimConfig, epochs: int) -> tuple[int, str]:
    """The first epoch at which trials on this schedule may be compared, and why (docs/method.md, "Early stopping").

    Epochs count from 1; epoch e trains with the lr of 0-based schedule step e - 1, so a decay at milestone m is
    first used in epoch m + 1. Multistep: after the first lr decay inside the run. Cosine: once half of the annealing
    span (after the warm-up) has been trained, where the lr reaches half its peak. Constant: after the warm-up.
    """
    after_warmup = optim.warmup_epochs + 1
    if optim.schedule == "multistep":
        decays = sorted(m for m in optim.milestones if m < epochs)
        if decays:
            return max(after_warmup, decays[0] + 1), f"after the first lr decay (optim.milestones {decays[0]})"
    if optim.schedule == "cosine":
        half = optim.warmup_epochs + math.ceil((epochs - optim.warmup_epochs) / 2)
        return max(after_warmup, half), "once half of the cosine schedule has been trained"
    return after_warmup, "after the lr warm-up"


def check_early_stopping(scheduler: SchedulerSpec, base: Config, search: dict) -> None:
    """ASHA compares trials at its rungs (grace_period * reduction_factor^k up to max_t); the first rung must fall where
    accuracy predicts the final result: ``grace_period >= earliest_rung`` for the base schedule and every searched
    schedule value."""
    if scheduler.type != "asha":
        return
    if not isinstance(scheduler.grace_period, int) or scheduler.grace_period < 1:
        raise ConfigError(f"tune.scheduler.grace_period must be an integer >= 1, got {scheduler.grace_period!r}")
    variants = [base]
    raw = config_to_dict(base)
    for key in SCHEDULE_KEYS:
        if key in search:
            variants += [config_from_dict(apply_params(raw, {key: v})) for v in distribution_values(search[key])]
    for cfg in variants:
        first, why = earliest_rung(cfg.optim, cfg.train.epochs)
        if scheduler.grace_period < first:
            raise ConfigError(
                f"tune.scheduler.grace_period {scheduler.grace_period} puts an ASHA rung before epoch {first} of the "
                f"{cfg.optim.schedule} schedule; allowed: grace_period >= {first} (a rung {why})")


def trial_config(space: SearchSpace, params: dict[str, Any], cross_checked: bool = True) -> Config:
    """The base config with one trial's sampled values and the experiment's per-trial resources
    (``cross_checked``: see ``config_from_dict``)."""
    raw = apply_params(config_to_dict(space.base), params)
    r = space.tune.resources
    raw["scaling"].update(num_workers=r.num_workers, cpus_per_worker=r.cpus_per_worker,
                          use_gpu=r.gpus_per_worker > 0, gpus_per_worker=r.gpus_per_worker or 1.0)
    return config_from_dict(raw, cross_checked=cross_checked)


def trial_count(space: SearchSpace) -> int:
    """How many trials Tune runs: with random or grid search every point of the ``grid`` keys' product is sampled
    ``num_samples`` times (a grid of 4 with ``num_samples: 4`` is 16 trials); a searcher (optuna) runs num_samples."""
    if space.tune.search_alg == "optuna":
        return space.tune.num_samples
    return space.tune.num_samples * math.prod(len(spec["grid"]) for spec in space.search.values() if "grid" in spec)


def final_config(space: SearchSpace, params: dict[str, Any], teacher_ref: str | None) -> dict:
    """``best_config.yaml``: the winning values on the base, trained on the whole training set (``val_fraction`` 0,
    so the run evaluates on the test set and keeps its last epoch), with ``teacher_ref`` the final run's teacher
    (trained on the whole training set too, see final.py)."""
    raw = apply_params(config_to_dict(space.base), params)
    raw["data"]["val_fraction"] = 0.0
    if teacher_ref:
        raw["teacher"]["checkpoint"] = teacher_ref
    raw["tracking"]["run_name"] = None
    return raw


# Keys a --resume may change: where Ray runs, how many rows the table prints. Everything else shapes the trials.
RESUMABLE_CHANGES = ("ray.address", "tune.top_k",
                     "tune.final.run", "tune.final.seeds", "tune.final.baselines")  # after the trials: --no-final


def space_snapshot(space: SearchSpace) -> dict[str, Any]:
    """The resolved space (base config with its --set overrides, teacher, search, tune) as flat dotted keys: what
    an experiment started with, compared on ``--resume``."""
    flat: dict[str, Any] = dict(flatten(config_to_dict(space.base)))
    if space.teacher_config is not None:
        flat.update(flatten(config_to_dict(space.teacher_config), "teacher.config"))
    flat["teacher.checkpoint"] = space.teacher_ref
    flat["teacher.final_checkpoint"] = space.final_teacher_ref
    flat.update({f"search.{key}": spec for key, spec in space.search.items()})
    flat.update(flatten(dataclasses.asdict(space.tune), "tune"))
    flat.pop("tune.name", None)  # the experiment's name is where the snapshot lives
    return flat


def changed_keys(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The dotted keys whose value differs between two snapshots (added or removed ones included), in order."""
    keys = list(dict.fromkeys([*stored, *now]))
    missing = object()
    return [k for k in keys if k.removeprefix("teacher.config.") not in RESUMABLE_CHANGES
            and stored.get(k, missing) != now.get(k, missing)]
