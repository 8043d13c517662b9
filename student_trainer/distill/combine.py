"""Several distillation losses at once: ``--loss kd+at``."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .base import DistillBatch, DistillLoss


class Combined(DistillLoss):
    """The sum of several losses, each weighted by its own flag (``--kd-weight``, ``--at-weight``...).

    The teacher is asked for the union of the parts' outputs; the trainer
    captures the union of their student features; ``forward`` returns every
    part's named term (``{"loss_kd": ..., "loss_at": ...}``), which the trainer adds.
    Parts are kept by name, so their modules' ``state_dict`` keys read
    ``parts.at...``, ``parts.crd.memory_s``...
    """
    name = "combined"
    about = "several losses summed, e.g. kd+at"

    def __init__(self, losses: Sequence[DistillLoss]):
        super().__init__()
        names = [loss.name for loss in losses]
        if len(set(names)) != len(names):
            raise ValueError(f"--loss {'+'.join(names)} names a loss twice")
        self.parts = nn.ModuleDict({loss.name: loss for loss in losses})
        self.name = "+".join(names)     # this instance's name, e.g. "kd+at"

    def teacher_outputs(self):
        return list(dict.fromkeys(o for part in self.parts.values() for o in part.teacher_outputs()))

    def student_features(self):
        return list(dict.fromkeys(f for part in self.parts.values() for f in part.student_features()))

    def forward(self, batch: DistillBatch):
        terms = {}
        for part in self.parts.values():
            terms.update(part(batch))
        return terms

    def extra_repr(self):
        return self.name
