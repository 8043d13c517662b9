"""Similarity-preserving distillation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common import reductions
from common.reductions import NONE
from student_trainer.config import setting

from .base import DistillBatch, TeacherOutput
from .pairs import FeatureLoss, reduce_feature, stage_names

REDUCTIONS = ("none", "pool", "attention")   # choices of --sp-reduction, all in common.reductions


def _similarity(f: torch.Tensor) -> torch.Tensor:
    """Row-normalised Gram matrix of the flattened features, ``N x N``."""
    f = f.flatten(1)
    return F.normalize(f @ f.t(), dim=1)


@dataclass(frozen=True)
class SPConfig:
    """SP's weight, and what the teacher sends of its features."""
    weight: float = setting(3000.0, "SP weight beta (RepDistiller/mdistiller: 3000)", flag="--sp-weight")
    reduction: str = setting(NONE, "what the teacher sends: none = full maps (the paper); pool or attention "
                             "send less but deviate from the paper", flag="--sp-reduction", choices=REDUCTIONS)

    def __post_init__(self):
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"--sp-reduction {self.reduction!r}: choose one of {', '.join(REDUCTIONS)}")


class SP(FeatureLoss):
    """Similarity-preserving KD: ``w * sum_pairs ||G_t - G_s||_F^2 / N^2``.

    Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019).
    ``G = normalise_rows(F F^T)`` with ``F`` the ``N x (C*H*W)`` flattened
    features of the batch, so only the N x N similarity matters and the student
    and teacher feature sizes may differ.  beta = 3000 (RepDistiller
    ``-b 3000``, mdistiller ``FEAT_WEIGHT``); the default pair is each model's
    last stage (RepDistiller ``feat[-2]``, mdistiller ``feats[-1]``).

    ``--sp-reduction`` (default ``none``, the paper) may ask the server for a
    reduced map instead to cut the bytes on the wire: ``pool`` (global average,
    C per image) or ``attention`` (mean_c f^2, H x W per image); the student's
    feature is reduced the same way.  Anything but ``none`` is a deviation from
    the paper: the similarities are then between pooled vectors or attention
    maps, not between the full activations.  The batch similarity is taken over
    the k images the teacher answered about (mixed images included).
    """
    name = "sp"
    about = "similarity-preserving KD (Tung & Mori 2019) on the last stage"
    config_type = SPConfig

    def __init__(self, pairs, weight: float = 3000.0, reduction: str = NONE):
        super().__init__(pairs)
        if reduction not in REDUCTIONS:
            raise ValueError(f"--sp-reduction {reduction!r}: choose one of {', '.join(REDUCTIONS)}")
        self.weight, self.teacher_reduction = float(weight), reduction

    @classmethod
    def build(cls, config: SPConfig, shapes, pairs):
        for s, t in pairs:
            for side, shape in (("student", shapes.student[s]), ("teacher", shapes.teacher[t])):
                try:
                    reductions.reduced_shape(config.reduction, tuple(shape))
                except ValueError:
                    raise ValueError(f"--sp-reduction {config.reduction} applies to "
                                     f"{reductions.APPLIES_TO[config.reduction]}, but the {side} feature of "
                                     f"pair {s}:{t} is {tuple(shape)}; use --sp-reduction none") from None
        return cls(pairs, weight=config.weight, reduction=config.reduction)

    @classmethod
    def default_pairs(cls, student_names, teacher_names):
        s, t = stage_names(student_names), stage_names(teacher_names)
        return [(s[-1], t[-1])] if s and t else []

    def forward(self, batch: DistillBatch):
        total = 0.0
        for s, t in self.pairs:
            f_s = reduce_feature(self.teacher_reduction, batch.student_features[s].float())
            f_t = batch.teacher[TeacherOutput(t, self.teacher_reduction).key].detach().float()
            n = f_s.shape[0]
            total = total + (_similarity(f_t) - _similarity(f_s)).pow(2).sum() / (n * n)
        return {"loss_sp": self.weight * total}

    def extra_repr(self):
        return f"pairs={self.pairs}, weight={self.weight}, reduction={self.teacher_reduction}"
