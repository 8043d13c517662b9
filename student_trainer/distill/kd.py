"""Hinton KD on the logits."""
from __future__ import annotations

from dataclasses import dataclass

from student_trainer.config import setting
from student_trainer.distill.functional import kd_loss

from .base import LOGITS, DistillBatch, DistillLoss


@dataclass(frozen=True)
class KDConfig:
    """Hinton KD's temperature and weight."""
    T: float = setting(4.0, "KD temperature (mdistiller/RepDistiller: 4)", flag="--T")
    weight: float = setting(1.0, "KD weight", flag="--kd-weight")

    def __post_init__(self):
        if self.T <= 0:
            raise ValueError(f"--T must be > 0, got {self.T}")


class KD(DistillLoss):
    """Knowledge distillation: ``w * T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean.

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015).
    Defaults follow mdistiller/RepDistiller on CIFAR-100: T = 4.  The weight
    ``--kd-weight`` defaults to 1.0 with the trainer's ``--ce-weight`` 0 (the first
    version of this project; mdistiller uses 0.9 with CE 0.1, RepDistiller
    ``-a 0.9 -r 0.1``).  ``--T`` and ``--kd-weight`` keep their original names.
    """
    name = "kd"
    about = "Hinton KD on the logits"
    config_type = KDConfig

    def __init__(self, T: float = 4.0, weight: float = 1.0):
        super().__init__()
        self.T, self.weight = float(T), float(weight)

    @classmethod
    def build(cls, config: KDConfig, shapes, pairs):
        return cls(T=config.T, weight=config.weight)

    def teacher_outputs(self):
        return [LOGITS]

    def forward(self, batch: DistillBatch):
        t = batch.teacher[LOGITS.key].detach()
        return {"loss_kd": self.weight * kd_loss(batch.student_logits, t, self.T)}

    def extra_repr(self):
        return f"T={self.T}, weight={self.weight}"
