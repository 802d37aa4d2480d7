"""The distillation maths: rotation task, losses and metrics as plain functions on tensors."""
from .losses import ce_loss, kd_loss, kl_div_t, mutual_loss, student_loss, teacher_loss
from .metrics import eval_sums, finalize_metrics, head_class_logits, topk_correct
from .rotation import rotate_batch, unrotated

__all__ = [
    "ce_loss", "eval_sums", "finalize_metrics", "head_class_logits", "kd_loss", "kl_div_t", "mutual_loss",
    "rotate_batch", "student_loss", "teacher_loss", "topk_correct", "unrotated",
]
