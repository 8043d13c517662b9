"""No distillation: the student learns from the labels alone."""
from __future__ import annotations

from .base import DistillBatch, DistillLoss


class NoDistill(DistillLoss):
    """The CE baseline (``--method ce``), and how a teacher is trained: no teacher is asked anything."""
    name = "none"
    about = "no teacher: cross-entropy on the labels only (--method ce)"
    needs_teacher = False

    def teacher_outputs(self):
        return []

    def forward(self, batch: DistillBatch):
        return {}
