"""Checkpoint directories: ``model.pt`` (weights), ``config.yaml`` (resolved config), ``meta.json`` (arch, classes,
placement, metrics) and, for resuming, ``train_state.pt`` (optimizer, scheduler, RNG; the weights stay in ``model.pt``
only). Written atomically, loaded with ``weights_only=True``."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..models import HSAKDNet, PlacementError, build_model, student_head_stages

MODEL_FILE, META_FILE, CONFIG_FILE, STATE_FILE = "model.pt", "meta.json", "config.yaml", "train_state.pt"


def write_checkpoint(path: str | Path, *, model_state: dict, meta: dict, config_yaml: str,
                     train_state: dict | None = None, extra: dict[str, dict] | None = None) -> Path:
    """Write a checkpoint directory at ``path``: into a temporary sibling first, then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        torch.save(model_state, tmp / MODEL_FILE)
        for name, state in (extra or {}).items():
            torch.save(state, tmp / f"{name}.pt")
        if train_state is not None:
            torch.save(_arrays_to_tensors(train_state), tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        (tmp / CONFIG_FILE).write_text(config_yaml)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write leaves the previous checkpoint and no debris
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    return path


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"{str(path)!r} is not an hsakd-ray checkpoint directory (no {META_FILE})")
    try:
        return json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_file} is corrupt: {exc}") from None


def load_tensor_file(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` onto the CPU; unreadable or unsafe files raise CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {str(path)!r} not found") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        reason = _first_reason(str(exc))
        raise CheckpointError(f"checkpoint file {str(path)!r} cannot be loaded with weights_only=True: "
                              f"{reason}") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise CheckpointError(f"checkpoint file {str(path)!r} cannot be read: {exc.strerror}") from None
    except (OSError, ValueError, IndexError, KeyError) as exc:  # a file cut short: torch.load's reader fails oddly
        reason = _first_reason(str(exc)) if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint file {str(path)!r} is truncated or corrupt ({reason}); "
                              "download or copy it again") from None


def _first_reason(message: str) -> str:
    """The informative line of torch.load's multi-line error, so the CLI can print one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip()
    return lines[0] if lines else "unreadable file"


# numpy arrays (the numpy RNG state) are not weights_only-loadable: stored as tensors under a marker key instead.
_NUMPY_KEY = "__numpy_array__"


def _arrays_to_tensors(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {_NUMPY_KEY: torch.from_numpy(obj.copy())}
    if isinstance(obj, dict):
        return {k: _arrays_to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_arrays_to_tensors(v) for v in obj)
    return obj


def _tensors_to_arrays(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_NUMPY_KEY}:
            return obj[_NUMPY_KEY].numpy()
        return {k: _tensors_to_arrays(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors_to_arrays(v) for v in obj)
    return obj


def load_train_state(path: str | Path) -> dict | None:
    """The optimizer, scheduler, RNG and model states saved for resuming (None when the checkpoint has none).

    The weights are stored once, in ``model.pt`` (and ``peer.pt`` ...): ``train_state.pt`` names those files
    (``model_files``) and they are read back into ``models`` here. Checkpoints of earlier versions, whose
    ``train_state.pt`` holds the weights itself under ``models``, load as they are.
    """
    path = Path(path)
    file = path / STATE_FILE
    if not file.is_file():
        return None
    state = _tensors_to_arrays(load_tensor_file(file))
    if "models" not in state:
        names = state.pop("model_files", ["model"])
        state["models"] = {name: load_tensor_file(path / f"{name}.pt") for name in names}
    return state


def _remap_heads(state: dict, stored: Sequence[int], wanted: Sequence[int]) -> dict:
    """Keep only the heads at ``wanted`` stages and renumber them to their position in ``wanted``."""
    out = {}
    for key, value in state.items():
        if key.startswith("heads."):
            _, idx, rest = key.split(".", 2)
            stage = stored[int(idx)]
            if stage not in wanted:
                continue
            key = f"heads.{list(wanted).index(stage)}.{rest}"
        out[key] = value
    return out


def load_network(path: str | Path, arch: str | None = None, aux_stages: str | Sequence[int] | None = None,
                 role: str = "teacher", student_arch: str | None = None) -> HSAKDNet:
    """Build the network stored at ``path`` and load its weights.

    ``arch`` must match the stored one. ``aux_stages`` is the placement of the student this network serves (``all``
    counts ``student_arch``'s stages; default: the stored arch): only the heads at those stages are kept, and they
    must exist (``student_head_stages``), so a teacher trained with heads everywhere serves any student placement.
    """
    meta = read_meta(path)
    stored_arch, stored_stages = meta["arch"], list(meta["aux_stages"])
    if arch is not None and arch != stored_arch:
        raise CheckpointError(f"{role} checkpoint {str(path)!r} holds {stored_arch!r}, but {role}.arch is {arch!r}")
    if aux_stages is None:
        wanted = stored_stages
    else:
        try:
            wanted = list(student_head_stages(student_arch or stored_arch, aux_stages, stored_stages))
        except PlacementError as exc:
            detail = (f"stages {exc.missing} were asked for (a student placement must be a subset of the teacher's "
                      f"heads)" if exc.missing else str(exc))
            raise CheckpointError(f"{role} checkpoint {str(path)!r} has heads at stages {stored_stages}; "
                                  f"{detail}") from None
    net = build_model(stored_arch, meta["num_classes"], aux_stages=wanted)
    state = _remap_heads(load_tensor_file(Path(path) / MODEL_FILE), stored_stages, wanted)
    load_weights(net, state, f"{role} checkpoint {str(path)!r}")
    return net


def load_weights(module: torch.nn.Module, state: dict, source: str, assign: bool = False) -> None:
    """``module.load_state_dict(state)`` (strict), with a one-line CheckpointError when the weights do not fit.
    ``assign``: the module's tensors become ``state``'s (a module built on the meta device gets real weights)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} holds {type(state).__name__}, not a state dict")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(getattr(state[k], "shape", ())) != expected[k].shape]
    if missing or unexpected or wrong:
        found = [f"{len(v)} {name} (first: {v[0]})" for name, v in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)) if v]
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: keys " + "; ".join(found))
    module.load_state_dict(state, assign=assign)


def load_pretrained_backbone(net: HSAKDNet, path: str | Path) -> None:
    """Initialise ``net``'s backbone from a weights file (a backbone / torchvision state dict) or from the backbone
    of a checkpoint directory (e.g. one written by ``hsakd-ray import``)."""
    source = f"teacher.pretrained {str(path)!r} ({net.arch} backbone)"
    if not Path(path).is_dir():
        load_weights(net.backbone, load_tensor_file(path), source)
        return
    meta = read_meta(path)
    if meta["arch"] != net.arch:
        raise CheckpointError(f"{source}: the checkpoint holds {meta['arch']!r}")
    state = load_tensor_file(Path(path) / MODEL_FILE)
    load_weights(net.backbone, {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")},
                 source)
