"""Attention transfer."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from student_trainer.config import setting

from .base import DistillBatch, TeacherOutput
from .pairs import FeatureLoss, pool_to_common, reduce_feature, shared_stages, spatial_problem

REDUCTION = "attention"


@dataclass(frozen=True)
class ATConfig:
    """Attention transfer's weight."""
    weight: float = setting(1000.0, "AT weight beta (RepDistiller/mdistiller: 1000)", flag="--at-weight")


class AT(FeatureLoss):
    """Attention transfer: ``w * sum_pairs mean_{n,j} (q_s[n,j] - q_t[n,j])^2``.

    Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017).
    The attention map of a feature ``f`` (``N x C x H x W``) is
    ``a = mean_c f^p`` with p = 2; ``q = a.flatten() / ||a.flatten()||_2`` per image.
    The loss follows RepDistiller's ``Attention`` (and mdistiller's AT): the
    squared difference averaged over images and positions, summed over pairs,
    beta = 1000 (RepDistiller ``-b 1000``, mdistiller ``FEAT_WEIGHT``; the UNIX-KD
    reference code uses the same).

    The teacher sends ``a`` already reduced (server reduction ``attention``,
    ``N x H x W``, not normalised); the student's ``a`` is computed here with the
    same ``common.reductions`` function, then both are flattened and normalised.
    p is fixed at 2 because that is what the server's reduction computes.

    Different spatial sizes: the larger *attention map* is adaptive-average-pooled
    to the smaller one's H x W.  RepDistiller pools the larger *feature map* before
    squaring; the teacher's map arrives already reduced, so here both sides pool
    the map (the mean of f^2 over a window, not the square of its mean).  Maps
    where neither side is larger in both axes are refused.  Default pairs: every
    ``stageN`` both models have (RepDistiller ``feat[1:-1]``).
    """
    name = "at"
    teacher_reduction = REDUCTION
    about = "attention transfer (Zagoruyko & Komodakis 2017) on stage features"
    config_type = ATConfig

    def __init__(self, pairs, weight: float = 1000.0):
        super().__init__(pairs)
        self.weight = float(weight)

    @classmethod
    def build(cls, config: ATConfig, shapes, pairs):
        return cls(pairs, weight=config.weight)

    @classmethod
    def default_pairs(cls, student_names, teacher_names):
        return [(n, n) for n in shared_stages(student_names, teacher_names)]

    @classmethod
    def pair_problem(cls, s_shape, t_shape):
        if len(s_shape) != 3 or len(t_shape) != 3:
            return "attention transfer needs C x H x W feature maps on both sides"
        return spatial_problem(s_shape[1:], t_shape[1:])

    def forward(self, batch: DistillBatch):
        total = 0.0
        for s, t in self.pairs:
            a_s = reduce_feature(REDUCTION, batch.student_features[s].float())
            a_t = batch.teacher[TeacherOutput(t, REDUCTION).key].detach().float()
            a_s, a_t = pool_to_common(a_s.unsqueeze(1), a_t.unsqueeze(1))
            q_s = F.normalize(a_s.flatten(1), dim=1)
            q_t = F.normalize(a_t.flatten(1), dim=1)
            total = total + (q_s - q_t).pow(2).mean()
        return {"loss_at": self.weight * total}

    def extra_repr(self):
        return f"pairs={self.pairs}, weight={self.weight}"
