"""hsakd-ray: HSAKD knowledge distillation, tuned with Ray Tune, scaled with Ray Train, audited in MLflow."""
from .distill import kd_loss, mutual_loss, rotate_batch, student_loss, teacher_loss
from .models import build_model, list_architectures

__version__ = "0.1.0"
__all__ = ["build_model", "kd_loss", "list_architectures", "mutual_loss", "rotate_batch", "student_loss",
           "teacher_loss", "__version__"]
