"""Frozen-teacher outputs shared by the trials of a sweep: computed once per batch, read by every other trial.

The teacher's outputs for a batch are a pure function of the teacher's weights and the batch. A file store in the
experiment's storage directory (shared by the nodes of a cluster, as Ray's storage is; it survives a driver restart)
holds them under ``STREAM/EPOCH/RANK-STEP.pt``, where STREAM hashes everything that decides a worker's batches and
the teacher's arithmetic (``stream_key``). Each file also carries a fingerprint of the exact input rows, checked on
every read: a trial whose batch differs (another stream, a changed augmentation) computes its own outputs, so a read
can never hand a trial outputs it would not have computed itself. Each file starts with a checksum of the bytes after
it, verified on every read: a file changed after it was written (overwritten in place, bit rot) is recomputed, never
trained on.

Writes are atomic (temp file + ``os.replace``). Before computing a missing batch a trial takes a claim
(``O_CREAT | O_EXCL``) naming its host and process; a trial finding a claim waits for the file (bounded), then
computes itself. A claim whose owner is gone is taken over: at once when the owner ran on this host and its process
has exited (a trial ASHA stopped or PBT restarted mid-batch), else when it is older than ``stale_s``.
A byte budget bounds the store: when full, later batches are not stored (the first epochs are kept, since every
trial of a sweep starts at epoch 1 and ASHA stops most trials early, so early epochs are the ones most trials read).
The store never fails a trial: when it is unwritable, full or a file is corrupt, the trial computes, and says so
once: in the worker's log, and (``TeacherOutputs.epoch_metrics``, key ``WARNING_KEY``) in the epoch's reported
metrics, which the sweep's driver prints and tags on the trial's MLflow run.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..distill.methods import method_spec

Outputs = tuple[torch.Tensor, list[torch.Tensor]]  # (final logits, each head's logits)
logger = logging.getLogger("hsakd_ray.teacher_cache")
HOST = socket.gethostname()
MAGIC = b"hsakd-teacher-outputs 2\n"  # then the payload's blake2b-128 in hex and a newline, then torch.save's bytes
WARNING_KEY = "teacher_store_warning"  # a reported metric: this trial's store warnings so far, one a line


def _owner_gone(claim: Path) -> bool:
    """True when ``claim`` names a process of this host that no longer runs (unknown owners count as alive)."""
    try:
        host, pid = claim.read_text().split()
    except (OSError, ValueError):
        return False  # gone already, or being written: not known to be dead
    if host != HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists (another user's process)
    try:  # exited but not yet reaped by its parent (a zombie) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@dataclass
class StoreSettings:
    """Where and how a sweep shares teacher outputs (sent to each trial's workers)."""

    root: str                       # the store's directory, in the experiment's storage
    budget_bytes: int = 8 * 2**30   # stop storing past this many bytes in ``root``
    dtype: str = "float32"          # "float32": exact; "bfloat16": half the bytes, outputs rounded to bf16
    wait_s: float = 60.0            # longest wait for a batch another trial has claimed
    stale_s: float = 300.0          # a claim older than this is taken over


def tensor_digest(t: torch.Tensor, h: Any) -> None:
    """Feed ``t``'s dtype, shape and bytes into the hash ``h``."""
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def fingerprint(x: torch.Tensor) -> str:
    """Hash of the exact input rows the teacher sees."""
    h = hashlib.blake2b(digest_size=16)
    tensor_digest(x, h)
    return h.hexdigest()


def checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=16).hexdigest().encode()


def seal(blob: dict) -> bytes:
    """The bytes of a stored file: ``MAGIC``, the payload's checksum, the payload (``blob`` as torch.save writes)."""
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    payload = buffer.getvalue()
    return MAGIC + checksum(payload) + b"\n" + payload


def unseal(data: bytes) -> bytes | None:
    """The payload of a stored file's bytes, or None when they do not match their checksum; ValueError when they
    are no stored file at all (no header)."""
    head = len(MAGIC) + 33
    if not data.startswith(MAGIC) or len(data) < head or data[head - 1:head] != b"\n":
        raise ValueError("no teacher-store header")
    payload = data[head:]
    return payload if data[len(MAGIC):head - 1] == checksum(payload) else None


def stream_key(teacher: nn.Module, parts: dict[str, Any]) -> str:
    """Hash of the teacher's weights (its content id, heads included) and ``parts`` (data config, batch size, seed,
    world size, rank, precision...): equal keys mean equal batches and equal teacher arithmetic."""
    h = hashlib.blake2b(digest_size=12)
    for name, value in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        tensor_digest(value, h)
    h.update(json.dumps({**parts, "torch": torch.__version__}, sort_keys=True, default=str).encode())
    return h.hexdigest()


class TeacherStore:
    """One stream's files: read (fingerprint-checked), claim, wait, publish within a byte budget."""

    def __init__(self, settings: StoreSettings, stream: str, rank: int = 0,
                 warn: Callable[[str], None] = logger.warning) -> None:
        self.settings, self.rank, self.warn = settings, rank, warn
        self.root = Path(settings.root)
        self.dir = self.root / stream
        self.dtype = torch.bfloat16 if settings.dtype == "bfloat16" else None
        self.writable, self.full = True, False
        self._used: int | None = None
        self._since_scan = 0
        self._warned: set[str] = set()
        self.warnings: list[str] = []  # every message warned, in order (each kind once)

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            self.warnings.append(f"teacher store: {message}")
            self.warn(self.warnings[-1])

    def path(self, epoch: int, step: int, suffix: str = ".pt") -> Path:
        return self.dir / f"{epoch:05d}" / f"{self.rank}-{step:06d}{suffix}"

    def read(self, epoch: int, step: int, fp: str) -> Outputs | None:
        """The stored outputs of this batch, or None (absent, another batch's, or unreadable or not matching its
        checksum: then removed, so the trial's own outputs replace it)."""
        path = self.path(epoch, step)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            return self._discard(path, "corrupt", f"{path} is unreadable ({type(exc).__name__}); computing instead")
        try:
            payload = unseal(data)
        except ValueError:
            return self._discard(path, "corrupt", f"{path} is unreadable (no teacher-store header); computing instead")
        if payload is None:
            return self._discard(path, "checksum", f"{path} does not match its checksum (changed after it was "
                                                   "written); recomputing it")
        try:
            blob = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 (any unreadable file: compute instead)
            return self._discard(path, "corrupt", f"{path} is unreadable ({type(exc).__name__}); computing instead")
        if not isinstance(blob, dict) or blob.get("fingerprint") != fp:
            return None  # another batch under this step: this trial's stream differs; compute
        if self.dtype is not None:  # stored rounded to save space: hand the step fp32 again
            return blob["logits"].float(), [q.float() for q in blob["aux"]]
        return blob["logits"], list(blob["aux"])

    def _discard(self, path: Path, kind: str, message: str) -> None:
        self._warn_once(kind, message)
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass

    def claim(self, epoch: int, step: int) -> bool:
        """Take the claim to compute this batch; False when another live trial holds it."""
        path = self.path(epoch, step, ".claim")
        for _ in range(2):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                try:
                    os.write(fd, f"{HOST} {os.getpid()}".encode())
                finally:
                    os.close(fd)
                return True
            except FileExistsError:
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if age < self.settings.stale_s and not _owner_gone(path):
                    return False
                path.unlink(missing_ok=True)  # its owner stopped: take it over
            except OSError as exc:
                self._unwritable(exc)
                return True  # no claims possible: compute, without waiting on anyone
        return True

    def release(self, epoch: int, step: int) -> None:
        try:
            self.path(epoch, step, ".claim").unlink(missing_ok=True)
        except OSError:
            pass

    def wait_for(self, epoch: int, step: int, fp: str, timeout: float) -> Outputs | bool:
        """Poll for a claimed batch's file until it appears (the outputs), its claim goes away or ``timeout`` seconds
        pass (False), or its owner's process is found gone (True: claim it again, do not give up waiting)."""
        deadline, pause, checked = time.monotonic() + timeout, 0.002, time.monotonic()
        claim = self.path(epoch, step, ".claim")
        while time.monotonic() < deadline:
            found = self.read(epoch, step, fp)
            if found is not None:
                return found
            if not claim.exists():
                return self.read(epoch, step, fp) or False
            if time.monotonic() - checked > 0.2:
                checked = time.monotonic()
                if _owner_gone(claim):
                    return True
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        return False

    def used_bytes(self) -> int:
        """Bytes of stored outputs under the store's root (every stream: the budget is the sweep's)."""
        total = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.stat(os.path.join(folder, name)).st_size
                except OSError:
                    continue
        return total

    def publish(self, epoch: int, step: int, fp: str, outputs: Outputs) -> bool:
        """Store this batch's outputs atomically (unless the store is full or unwritable); True when stored."""
        if not self.writable or self.full:
            return False
        logits, aux = outputs
        cast = (lambda t: t.detach().to("cpu", self.dtype)) if self.dtype else (lambda t: t.detach().to("cpu"))
        blob = {"fingerprint": fp, "logits": cast(logits), "aux": [cast(q) for q in aux]}
        size = sum(t.numel() * t.element_size() for t in [blob["logits"], *blob["aux"]]) + 1024
        if self._used is None or self._since_scan >= 64:  # others write too: rescan now and then
            self._used, self._since_scan = self.used_bytes(), 0
        if self._used + size > self.settings.budget_bytes:
            self.full = True
            self._warn_once("full", f"budget of {self.settings.budget_bytes / 2**30:.2f} GiB reached at epoch "
                                    f"{epoch} step {step}; later batches are computed by each trial")
            return False
        path = self.path(epoch, step)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = seal(blob)
            fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            self._unwritable(exc)
            return False
        self._used += size
        self._since_scan += 1
        return True

    def _unwritable(self, exc: OSError) -> None:
        self.writable = False
        self._warn_once("unwritable", f"cannot write under {self.dir} ({exc}); this trial computes its own outputs")


class TeacherOutputs:
    """What the step asks for a batch's teacher outputs: read from the store, or computed (and then published).

    Steps are counted from ``start_epoch``; the fingerprint makes a miscount a miss, never a wrong read. ``heads``:
    which of the stored heads' outputs the step gets (None: all), so students of any head placement share a stream.
    """

    def __init__(self, store: TeacherStore, device: torch.device, heads: list[int] | None = None) -> None:
        self.store, self.device, self.heads = store, device, heads
        self.epoch, self.step = 0, 0
        self.counts = {"hits": 0, "computed": 0, "waited": 0}
        self.seconds = {"store": 0.0, "wait": 0.0}  # this epoch's cost of sharing: hashing, file I/O; waiting
        self.totals = {"hits": 0, "steps": 0}
        self._compute_s: float | None = None
        self._waits_pay = True
        self._spent = 0.0  # seconds of the current call spent computing or waiting (not sharing overhead)

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.step, self._waits_pay = epoch, 0, True
        self.counts = dict.fromkeys(self.counts, 0)
        self.seconds = dict.fromkeys(self.seconds, 0.0)

    def outputs(self, inputs: torch.Tensor, compute: Callable[[torch.Tensor], Outputs]) -> Outputs:
        start, self._spent = time.perf_counter(), 0.0
        logits, aux = self._outputs(inputs, compute)
        self.seconds["store"] += time.perf_counter() - start - self._spent
        return logits, aux if self.heads is None else [aux[i] for i in self.heads]

    def _outputs(self, inputs: torch.Tensor, compute: Callable[[torch.Tensor], Outputs]) -> Outputs:
        step, self.step = self.step, self.step + 1
        store, fp = self.store, fingerprint(inputs)
        found = store.read(self.epoch, step, fp)
        claimed = False
        if found is None and store.writable and not store.full and self._waits_pay:
            claimed = store.claim(self.epoch, step)
            if claimed:
                found = store.read(self.epoch, step, fp)  # published between the read and the claim
            else:
                self.counts["waited"] += 1
                timeout = store.settings.wait_s if self._compute_s is None else min(
                    store.settings.wait_s, 4 * self._compute_s + 1.0)
                began = time.perf_counter()
                waited = store.wait_for(self.epoch, step, fp, timeout)
                self._spent += time.perf_counter() - began
                self.seconds["wait"] += time.perf_counter() - began
                found = None if isinstance(waited, bool) else waited
                if waited is True:  # its owner was stopped mid-batch: compute it here, under this trial's claim
                    claimed = store.claim(self.epoch, step)
                else:
                    # a claim that ended without a file: its owner stores no more (budget) or hangs; waiting again
                    # would double this trial's time, so it computes unclaimed until the next epoch
                    self._waits_pay = found is not None
        if found is not None:
            if claimed:
                store.release(self.epoch, step)
            self.counts["hits"] += 1
            logits, aux = found
            return logits.to(self.device), [q.to(self.device) for q in aux]
        start = time.perf_counter()
        out = compute(inputs)
        took = time.perf_counter() - start
        self._spent += took
        self._compute_s = took if self._compute_s is None else 0.8 * self._compute_s + 0.2 * took
        self.counts["computed"] += 1
        try:
            store.publish(self.epoch, step, fp, out)
        finally:
            if claimed:
                store.release(self.epoch, step)
        return out

    def epoch_metrics(self) -> dict[str, float]:
        """This epoch's share of steps read from the store (``teacher_cache/hit_fraction``), running totals, the
        seconds sharing cost: hashing rows, reading and writing files (``store_seconds``), waiting on claims; and,
        once the store has warned, its warnings so far (``WARNING_KEY``, a string: never an MLflow metric)."""
        c = self.counts
        steps = c["hits"] + c["computed"]
        self.totals["hits"] += c["hits"]
        self.totals["steps"] += steps
        said = {WARNING_KEY: "\n".join(self.store.warnings)} if self.store.warnings else {}
        return {**said,"teacher_cache/hit_fraction": c["hits"] / steps if steps else 0.0,
                "teacher_cache/hits": float(c["hits"]), "teacher_cache/computed": float(c["computed"]),
                "teacher_cache/waited": float(c["waited"]), "teacher_cache/store_seconds": self.seconds["store"],
                "teacher_cache/wait_seconds": self.seconds["wait"],
                "teacher_cache/hits_total": float(self.totals["hits"]),
                "teacher_cache/steps_total": float(self.totals["steps"])}


def device_kind(device: torch.device) -> str:
    """The kind of chip the teacher runs on, as far as it changes its arithmetic: the GPU model and compute
    capability with its TF32 switches, or the CPU's vector instruction set (the kernels torch dispatches to)."""
    if device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return (f"cuda {torch.cuda.get_device_name(device)} sm{major}{minor} tf32 "
                f"matmul={torch.backends.cuda.matmul.allow_tf32} cudnn={torch.backends.cudnn.allow_tf32}")
    if device.type == "cpu":
        return f"cpu {torch.backends.cpu.get_cpu_capability()}"
    return device.type


def stream_parts(cfg: Any, rank: int, world_size: int, device: torch.device, autocast: torch.dtype | None,
                 compiled: str = "eager") -> dict:
    """What, besides the teacher's weights, decides a worker's batches and the teacher's arithmetic: the precision
    (``autocast``, as resolved from ``train.precision``) and compile mode (``compiled``, as resolved from
    ``train.compile`` / ``compile_mode``: "eager" or the mode) the job runs with, not their settings, so trials whose
    settings resolve alike share a stream and trials whose arithmetic differs never do."""
    data = {k: v for k, v in asdict(cfg.data).items() if k not in ("loader_workers", "download")}
    t = cfg.train
    return {"data": data, "batch_size": t.batch_size, "seed": t.seed, "world_size": world_size, "rank": rank,
            "method": cfg.distill.method, "device": device.type, "device_kind": device_kind(device),
            "precision": str(autocast), "compile": compiled, "channels_last": t.channels_last,
            "chunk_rows": t.cpu_chunk_rows, "inference_mode": t.inference_mode, "device_data": t.device_data}


def shares(settings: dict | StoreSettings | None, task: Any, cfg: Any) -> bool:
    return settings is not None and getattr(task, "teacher", None) is not None and \
        method_spec(cfg.distill.method).needs_teacher


def widen_teacher(settings: dict | StoreSettings | None, task: Any, cfg: Any) -> list[int] | None:
    """When sharing an ``hsakd`` teacher: reload it with every head its checkpoint has, so trials searching the
    student's head placement share one stream; returns the positions of the student's heads among them (None: the
    teacher is unchanged). A head is its own branch, so the selected outputs equal those of the narrower teacher."""
    if not shares(settings, task, cfg) or not method_spec(cfg.distill.method).teacher_heads:
        return None
    from .checkpoint import load_network, read_meta

    stored = [int(s) for s in read_meta(cfg.teacher.checkpoint)["aux_stages"]]
    wanted = [int(s) for s in task.teacher.aux_stages]
    if stored == wanted:
        return None
    task.teacher = load_network(cfg.teacher.checkpoint, cfg.teacher.arch, None).eval().requires_grad_(False)
    return [stored.index(s) for s in wanted]


def build_provider(settings: dict | StoreSettings | None, task: Any, cfg: Any, rank: int, world_size: int,
                   device: torch.device, autocast: torch.dtype | None,
                   heads: list[int] | None = None, compiled: str = "eager") -> TeacherOutputs | None:
    """A provider for a distill task with a frozen teacher when sharing is on (``settings``), else None."""
    if not shares(settings, task, cfg):
        return None
    if isinstance(settings, dict):
        settings = StoreSettings(**settings)
    stream = stream_key(task.teacher, stream_parts(cfg, rank, world_size, device, autocast, compiled))
    return TeacherOutputs(TeacherStore(settings, stream, rank), device, heads)
