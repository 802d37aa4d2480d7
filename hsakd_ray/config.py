"""The one config schema for every command: typed dataclasses, strict YAML loading and ``--set`` overrides.

Every key is documented in docs/configuration.md. Unknown keys, wrong types and out-of-range values raise
``ConfigError`` with a one-line message naming the dotted key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import re
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats without a dot (``1e-3``, ``5E-4``); PyYAML makes them strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)




def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


@dataclass
class DataConfig:
    name: Literal["cifar100", "cifar10", "imagefolder", "stl10", "tinyimagenet", "digits", "synthetic"] = "cifar100"
    root: str = "./data"                   # dataset directory (torchvision layout)
    download: bool = False                 # let torchvision download cifar/stl10 when missing
    train_root: str | None = None          # imagefolder / tinyimagenet: class-per-folder training tree
    val_root: str | None = None            # imagefolder / tinyimagenet: class-per-folder evaluation tree
    image_size: int | None = field(default=None, metadata=_range(16))  # None: the dataset's native size
    augment: Literal["auto", "crop_flip", "resized_crop_flip", "none"] | bool = "auto"  # true/false: auto/none
    flip: Literal["auto"] | bool = "auto"  # horizontal flip in crop_flip / resized_crop_flip; auto: per dataset
    mean: list[float] | None = None        # per-channel normalisation (1 or 3 values); None: published or computed
    std: list[float] | None = None
    val_fraction: float = field(default=0.0, metadata=_range(0.0, 0.5))  # >0: evaluate on a held-out split
    split_seed: int = 0                    # seed of the stratified validation / few-shot split
    few_shot_ratio: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    synthetic_train_size: int = field(default=512, metadata=_range(1))
    synthetic_test_size: int = field(default=128, metadata=_range(1))
    synthetic_classes: int = field(default=10, metadata=_range(2))
    loader_workers: int = field(default=0, metadata=_range(0))  # DataLoader worker processes per trainer worker

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):  # configs written before the named policies
            self.augment = "auto" if self.augment else "none"


IN_MEMORY_DATASETS = ("digits", "synthetic")  # tensors, augmented on the device: no resized crops


def validate_data(data: DataConfig) -> None:
    """``data`` keys that depend on each other: normalisation per channel, augmentation the dataset supports."""
    for key in ("mean", "std"):
        values = getattr(data, key)
        if values is not None and len(values) not in (1, 3):
            raise ConfigError(f"data.{key} must have 1 value (all channels) or 3 (R, G, B), got {values}")
    if data.std is not None and any(v <= 0 for v in data.std):
        raise ConfigError(f"data.std values must be > 0, got {data.std}")
    if data.augment == "resized_crop_flip" and data.name in IN_MEMORY_DATASETS:
        raise ConfigError(f"data.augment 'resized_crop_flip' is not available for {data.name} (in-memory tensors); "
                          "allowed: auto, crop_flip, none")


@dataclass
class NetworkConfig:
    arch: str = "wrn_16_2"
    aux_stages: Literal["all"] | list[int] = "all"  # stages carrying auxiliary heads (1-based)
    checkpoint: str | None = None          # path, runs:/RUN_ID/PATH or models:/NAME/VERSION
    pretrained: str | None = None          # backbone weights (e.g. a torchvision state dict) for frozen mode
    mode: Literal["joint", "frozen"] = "joint"  # teacher: train backbone with heads, or heads on a fixed backbone


@dataclass
class DistillConfig:
    method: str = "hsakd"                  # a row of distill/methods.py: hsakd, kd, ce, mutual
    temperature: float = field(default=3.0, metadata=_range(0.0, lo_open=True))
    head_temperature: float | None = field(default=None, metadata=_range(0.0, lo_open=True))  # None: temperature
    alpha: float = field(default=1.0, metadata=_range(0.0))  # weight of the head-by-head KL terms
    beta: float = field(default=1.0, metadata=_range(0.0))   # weight of the final-layer KL over all rotations
    head_weights: list[float] | None = None  # one weight per paired head, in stage order; None: all 1


@dataclass
class OptimConfig:
    lr: float = field(default=0.05, metadata=_range(0.0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))
    nesterov: bool = True
    weight_decay: float = field(default=5e-4, metadata=_range(0.0))
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = field(default=0.1, metadata=_range(0.0, 1.0, lo_open=True))
    warmup_epochs: int = field(default=0, metadata=_range(0))


@dataclass
class TrainConfig:
    epochs: int = field(default=240, metadata=_range(1))
    batch_size: int = field(default=64, metadata=_range(1))  # global images per step, before rotation (x4 rows)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: str = "./outputs"          # where runs write checkpoints
    checkpoint_every: int = field(default=1, metadata=_range(1))
    channels_last: bool = True             # fast path: NHWC memory format (faster convs on GPU and AVX-512 CPUs)
    # auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX), fp32 elsewhere (engine/precision.py)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # auto: torch.compile on CUDA when the job has enough steps to repay compiling (engine/compiling.py), else eager
    compile: bool | Literal["auto"] = "auto"
    # torch.compile's mode when compiling; auto: reduce-overhead (CUDA graphs) on CUDA, default on CPU
    compile_mode: Literal["auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "auto"
    inference_mode: bool = True            # fast path: frozen teacher under torch.inference_mode (else no_grad)
    teacher_overlap: bool = True           # fast path on CPU: teacher's next batch on its own threads during the step
    cpu_chunk_rows: int = field(default=64, metadata=_range(0))  # fast path on CPU: teacher/eval forward in chunks
    threads: int | None = field(default=None, metadata=_range(1))  # CPU intra-op threads per worker; None: its CPUs
    device_data: bool = True               # fast path: digits/synthetic/CIFAR held on the device, crop/flip there
    fused_optimizer: bool = True           # fast path: fused SGD kernel (CUDA, and CPU where torch has one)


@dataclass
class ScalingConfig:
    num_workers: int = field(default=1, metadata=_range(1))
    use_gpu: bool = False
    cpus_per_worker: float = field(default=1.0, metadata=_range(0.0, lo_open=True))
    gpus_per_worker: float = field(default=1.0, metadata=_range(0.0))


@dataclass
class RayConfig:
    address: str | None = None             # None: start a local Ray; "auto" or host:port: join a cluster
    storage_path: str = "./ray_results"    # local dir, or a shared filesystem / s3:// / gs:// URI on clusters
    max_failures: int = field(default=2, metadata=_range(-1))


@dataclass
class TrackingConfig:
    uri: str | None = None                 # None: MLFLOW_TRACKING_URI, else MLflow's default
    experiment: str = "hsakd-ray"
    run_name: str | None = None            # also names the Ray run (storage_path/run_name); default kind-arch-time
    register_model: str | None = None      # register the kept checkpoint as this MLflow model name


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: NetworkConfig = field(default_factory=lambda: NetworkConfig(arch="wrn_40_2"))
    student: NetworkConfig = field(default_factory=NetworkConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ---------------------------------------------------------------- building and validation

def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        item = typing.get_args(tp)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(item, _describe(item))
    if tp is type(None):
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float) or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(v, typing.get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value)]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} must be {_describe(tp)}, got {value!r}")


def _check_range(value: Any, meta: dict, key: str) -> None:
    if "lo" not in meta or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    lo, hi, lo_open = meta["lo"], meta["hi"], meta["lo_open"]
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and value > hi
    if too_low or too_high:
        left = "(" if lo_open else "["
        allowed = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ConfigError(f"{key} must be in {allowed}, got {value!r}")


# Keys of earlier versions, refused with the key that replaced them.
RENAMED_KEYS = {
    "train.bf16": "use train.precision (auto, fp32 or bf16; auto is bf16 on CUDA)",
    "train.cpu_bf16": "use train.precision (auto, fp32 or bf16; auto is bf16 on CPUs with native bf16)",
}


def _build(cls: type, raw: Any, prefix: str, base: Any = None) -> Any:
    """``base`` (default ``cls()``) with the keys of ``raw`` replaced; nested sections start from ``base``'s own
    value, so a section given in part keeps the schema's defaults for that section (teacher.arch is wrn_40_2)."""
    base = cls() if base is None else base
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        if key in RENAMED_KEYS:
            raise ConfigError(f"config key {key!r} was replaced: {RENAMED_KEYS[key]}")
        raise ConfigError(f"unknown config key {key!r}; allowed: {', '.join(fields)}")
    values = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, value or {}, key, getattr(base, name))
        else:
            values[name] = _coerce(value, tp, key)
            _check_range(values[name], fields[name].metadata, key)
    return dataclasses.replace(base, **values)


def config_from_dict(raw: dict, base: Config | None = None, cross_checked: bool = True) -> Config:
    """``raw`` laid over ``base`` (default: the schema's defaults), each key type- and range-checked, and the whole
    cross-checked (``validate``) unless ``cross_checked`` is False: that needs the model registry (torch and
    torchvision, a second of imports), so a Tune trial's process, which only builds the trainer, leaves it to the
    Train worker, where every job's config is checked whole before anything trains."""
    cfg = _build(Config, raw, "", base)
    if cross_checked:
        validate(cfg)
    return cfg


def job_defaults(kind: str | None, dataset: str | None = None) -> Config:
    """What a job's YAML is laid over: the schema's defaults, or for a ``probe`` job the reference's linear-probe
    protocol (``probe_protocol.py``), with its data pipeline for ``dataset``."""
    if kind != "probe":
        return Config()
    from .probe_protocol import probe_defaults

    return _build(Config, probe_defaults(dataset), "")


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def validate(cfg: Config) -> None:
    """Cross-field checks that one key's type cannot express."""
    from .distill.methods import METHODS
    from .models import list_architectures, num_stages  # local: models import torch

    validate_data(cfg.data)
    if cfg.distill.method not in METHODS:
        allowed = ", ".join(repr(m) for m in METHODS)
        raise ConfigError(f"distill.method must be one of {allowed}, got {cfg.distill.method!r}")

    for section in ("teacher", "student"):
        net: NetworkConfig = getattr(cfg, section)
        if net.arch not in list_architectures():
            choices = ", ".join(list_architectures())
            raise ConfigError(f"{section}.arch {net.arch!r} is unknown; choose one of: {choices}")
        if net.aux_stages != "all":
            stages = num_stages(net.arch)
            bad = [s for s in net.aux_stages if not 1 <= s <= stages]
            if bad:
                raise ConfigError(f"{section}.aux_stages {bad} not in 1..{stages}: {net.arch} has {stages} stages")
    if any(m < 1 for m in cfg.optim.milestones):
        raise ConfigError(f"optim.milestones must be epochs >= 1, got {cfg.optim.milestones}")
    weights = cfg.distill.head_weights
    if weights is not None and any(w < 0 for w in weights):
        raise ConfigError(f"distill.head_weights must be >= 0, got {weights}")
    if weights is not None and METHODS[cfg.distill.method].teacher_heads:
        s = cfg.student
        heads = num_stages(s.arch) if s.aux_stages == "all" else len(set(s.aux_stages))
        if len(weights) != heads:
            raise ConfigError(f"distill.head_weights has {len(weights)} entries but student.aux_stages "
                              f"{s.aux_stages!r} gives {s.arch} {heads} heads: one weight per head, in stage order")
    if cfg.scaling.use_gpu and cfg.scaling.gpus_per_worker < 1 and cfg.scaling.num_workers > 1:
        raise ConfigError(
            "scaling.gpus_per_worker < 1 (fractional GPUs) works only with scaling.num_workers: 1 "
            "(multi-worker NCCL on a shared GPU fails)"
        )


NETWORK_KEYS = ("teacher.arch", "teacher.aux_stages", "student.arch", "student.aux_stages")


def check_network_unchanged(stored: Config, cfg: Config, source: str) -> None:
    """``--set`` on a checkpoint's stored config may change its data and run settings, never the networks: those
    come from the checkpoint itself, so a different value would be silently ignored."""
    for key in NETWORK_KEYS:
        section, name = key.split(".")
        before, after = getattr(getattr(stored, section), name), getattr(getattr(cfg, section), name)
        if before != after:
            raise ConfigError(f"--set {key}={after!r}: the checkpoint {source} holds {key} {before!r}, and the "
                              "network is the checkpoint's own; evaluate a checkpoint of that architecture instead")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} must look like section.key=value")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set key {key!r} must be dotted: section.key")
    if not value.strip():
        return parts, None
    try:
        return parts, _yaml_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key.strip()}: value {value!r} is not valid YAML ({_yaml_problem(exc)}); "
                          "quote a string, write a list as [1, 2]") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = dict(raw)
    for text in overrides:
        parts, value = parse_override(text)
        set_dotted(raw, parts, value)
    return raw


def set_dotted(raw: dict, parts: list[str], value: Any) -> None:
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, dict) else {}
        node = node[part]
    node[parts[-1]] = value


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
    return where + str(getattr(exc, "problem", None) or exc).splitlines()[0]


def read_yaml(path: str | Path) -> dict:
    """Safe-load a YAML mapping, with one-line errors for a missing, unreadable, binary, empty or malformed file."""
    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise ConfigError(f"config file {name!r} is a directory; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {name!r} not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {name!r} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {name!r} is not a text file (not UTF-8): give a YAML config") from None
    if "\0" in text:
        raise ConfigError(f"config file {name!r} is not a text file (holds NUL bytes): give a YAML config")
    try:
        raw = _yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {name!r} is not valid YAML: {_yaml_problem(exc)}") from None
    if raw is None:
        raise ConfigError(f"config file {name!r} is empty: it needs at least a data section "
                          "(see docs/configuration.md or configs/)")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {name!r} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None, overrides: list[str] = (), kind: str | None = None) -> Config:
    """The config of a ``kind`` job (teacher / distill / probe) from a YAML file and ``--set`` overrides."""
    raw = apply_overrides(read_yaml(path) if path else {}, list(overrides))
    data = raw.get("data")
    dataset = data.get("name", DataConfig.name) if isinstance(data, dict) else DataConfig.name
    return config_from_dict(raw, job_defaults(kind, dataset))


def run_name(cfg: Config, kind: str) -> str:
    """The job's name (its MLflow run, its Ray run directory, its local output directory): ``tracking.run_name`` or
    ``KIND-ARCH-TIME``. Computed once per command; ``--resume`` needs ``tracking.run_name`` to find the run again."""
    arch = cfg.teacher.arch if kind == "teacher" else cfg.student.arch
    return cfg.tracking.run_name or f"{kind}-{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"section.key": value} (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
