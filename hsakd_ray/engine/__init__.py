"""Training in plain PyTorch: tasks, epoch loops, checkpoints and the job runner (no Ray, no MLflow)."""
from .checkpoint import CheckpointError, load_network, load_train_state, read_meta, write_checkpoint
from .runner import Runtime, resolve_device, run_job
from .tasks import build_task

__all__ = ["CheckpointError", "Runtime", "build_task", "load_network", "load_train_state", "read_meta",
           "resolve_device", "run_job", "write_checkpoint"]
