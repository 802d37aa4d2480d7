"""hsakd-ray: HSAKD knowledge distillation, tuned with Ray Tune, scaled with Ray Train, audited in MLflow.

The top-level names load lazily, so commands that need no torch (``hsakd-ray cluster ...``) start fast.
"""
from importlib import import_module

__version__ = "0.1.0"
_LAZY = {"build_model": "models", "list_architectures": "models", "kd_loss": "distill", "mutual_loss": "distill",
         "rotate_batch": "distill", "student_loss": "distill", "teacher_loss": "distill"}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hsakd_ray' has no attribute {name!r}")
