"""The distillation losses (plain functions)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """Hinton's KD: KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.to(student_logits.dtype) / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T * T


def mixed_ce(logits: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor,
             mix: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on mixed labels: (1-m) CE(y_a) + m CE(y_b), per image, averaged."""
    ce_a = F.cross_entropy(logits, labels_a, reduction="none")
    ce_b = F.cross_entropy(logits, labels_b, reduction="none")
    return ((1 - mix) * ce_a + mix * ce_b).mean()
