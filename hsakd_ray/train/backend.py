"""The torch process group of a Train job, set up from processes that never import torch.

Ray's ``TorchConfig`` lives in a module that imports torch, and so does ``TorchTrainer``'s. A Train run unpickles its
backend config in the Train controller, and a Tune trial builds its trainer in its own process, so both processes
imported torch (2 to 3 CPU-seconds each) only to tell the workers to set up a process group: seconds of every
trial's start-up, on the critical path from ``Tuner.fit()`` to the first step. Here the controller side is plain
Ray, and everything that touches torch runs in the workers, which import it anyway.

What the workers do is what Ray's torch backend does for CPUs (gloo) and CUDA GPUs (nccl): the rank and world-size
environment variables, ``MASTER_ADDR``/``MASTER_PORT`` from worker 0, ``init_process_group`` with the config's
timeout, the current CUDA device in the train function, and the group destroyed at the end.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import ray
from ray.train._internal.utils import get_address_and_port  # what Ray's torch backend asks worker 0 (no torch)
from ray.train.backend import Backend, BackendConfig
from ray.train.constants import DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S as DEFAULT_SHUTDOWN_TIMEOUT_S
from ray.train.constants import TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S as SHUTDOWN_TIMEOUT_ENV

logger = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")


@dataclass
class TorchGroupConfig(BackendConfig):
    """``TorchConfig``'s fields for the backends hsakd-ray runs: ``gloo`` (CPU) or ``nccl`` (CUDA)."""

    backend: str = "gloo"
    timeout_s: int = 1800

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")

    @property
    def backend_cls(self) -> type[Backend]:
        return TorchGroupBackend

    @property
    def train_func_context(self) -> type:
        return CudaDevice

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework  # Ray's state export reads it

        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}


class CudaDevice:
    """Around the train function in each worker: a CUDA worker's own GPU is torch's current device."""

    def __enter__(self) -> None:
        import torch

        if torch.cuda.is_available():
            import ray.train.torch

            device = ray.train.torch.get_device()
            if device.type == "cuda":
                torch.cuda.set_device(device)

    def __exit__(self, *exc) -> bool:
        return False


class TorchGroupBackend(Backend):
    share_cuda_visible_devices = True  # as Ray's torch backend: a worker sees its node's GPUs of this run

    def on_start(self, worker_group, backend_config: TorchGroupConfig) -> None:
        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(set_rank_env, addr=addr, port=port)
        size = len(worker_group)
        ray.get([worker_group.execute_single_async(rank, init_group, backend=backend_config.backend, world_rank=rank,
                                                   world_size=size, timeout_s=backend_config.timeout_s)
                 for rank in range(size)])

    def on_shutdown(self, worker_group, backend_config: TorchGroupConfig) -> None:
        timeout_s = int(os.environ.get(SHUTDOWN_TIMEOUT_ENV, DEFAULT_SHUTDOWN_TIMEOUT_S))
        try:  # as Ray's: a 1-worker group is left to the process's exit
            ray.get(worker_group.execute_async(destroy_group, destroy=len(worker_group) > 1), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            logger.warning(f"torch process group shutdown timed out after {timeout_s} s")


# What the workers run (functions pickled by reference: the workers import this module, and torch, themselves).

def set_rank_env(addr: str, port: int) -> None:
    """The environment torch.distributed's ``env://`` and libraries read: ranks, sizes, the master's address."""
    import ray.train.torch

    ctx = ray.train.get_context()
    os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port), LOCAL_RANK=str(ctx.get_local_rank()),
                      LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()), NODE_RANK=str(ctx.get_node_rank()),
                      RANK=str(ctx.get_world_rank()), WORLD_SIZE=str(ctx.get_world_size()),
                      ACCELERATE_TORCH_DEVICE=str(ray.train.torch.get_device()))


def init_group(backend: str, world_rank: int, world_size: int, timeout_s: int) -> None:
    import torch.distributed as dist

    if backend == "nccl" and "TORCH_NCCL_BLOCKING_WAIT" not in os.environ:
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # a hung collective fails, as in Ray's backend
    dist.init_process_group(backend=backend, init_method="env://", rank=world_rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def destroy_group(destroy: bool) -> None:
    import torch
    import torch.distributed as dist

    if destroy and dist.is_initialized():
        dist.destroy_process_group()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
