"""Relational knowledge distillation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from student_trainer.config import setting

from .base import DistillBatch
from .pairs import EmbeddingLoss

PDIST_EPS = 1e-12


def _distances(e: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix with a zero diagonal (RepDistiller/mdistiller ``pdist``)."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=PDIST_EPS).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = _distances(e)
    return d / d[d > 0].mean()


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between i and k: <e_i - e_j, e_k - e_j> / norms, ``N^3`` flattened."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)   # [j, i] = e_i - e_j
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


@dataclass(frozen=True)
class RKDConfig:
    """RKD's overall, distance and angle weights."""
    weight: float = setting(1.0, "RKD overall weight (RepDistiller/mdistiller: 1)", flag="--rkd-weight")
    distance_weight: float = setting(25.0, "distance term weight (paper: 25)", flag="--rkd-distance-weight")
    angle_weight: float = setting(50.0, "angle term weight (paper: 50)", flag="--rkd-angle-weight")


class RKD(EmbeddingLoss):
    """Relational KD: ``w * (w_d * L_distance + w_a * L_angle)``.

    Park, Kim, Lu & Cho, "Relational Knowledge Distillation" (CVPR 2019).
    L_distance is the smooth-L1 (Huber, delta 1) loss between the pairwise
    distance matrices, each divided by the mean of its non-zero distances;
    L_angle the smooth-L1 loss between the cosines of all triplet angles; both
    averaged over their entries, as RepDistiller's ``RKDLoss`` and mdistiller's
    RKD (teacher side without gradient; pdist eps 1e-12, not squared).  Weights
    w_d = 25, w_a = 50 (the paper), overall weight 1 (RepDistiller ``-b 1``,
    mdistiller ``FEAT_WEIGHT``).  Default pair ``pool:pool``; other features are
    flattened.  With fewer than 2 images in a batch there are no relations and the
    term is 0.
    """
    name = "rkd"
    about = "relational KD (Park et al. 2019): distance and angle on the pool embedding"
    config_type = RKDConfig

    def __init__(self, pairs, weight=1.0, distance_weight=25.0, angle_weight=50.0):
        super().__init__(pairs)
        self.weight, self.distance_weight, self.angle_weight = float(weight), float(distance_weight), float(angle_weight)

    @classmethod
    def build(cls, config: RKDConfig, shapes, pairs):
        return cls(pairs, weight=config.weight, distance_weight=config.distance_weight,
                   angle_weight=config.angle_weight)

    def forward(self, batch: DistillBatch):
        total = 0.0
        for s, t in self.pairs:
            e_s = batch.student_features[s].float().flatten(1)
            if len(e_s) < 2:
                total = total + 0.0 * e_s.sum()
                continue
            with torch.no_grad():
                e_t = batch.teacher[t].float().flatten(1)
                d_t, a_t = _normalised_distances(e_t), _angles(e_t)
            loss_d = F.smooth_l1_loss(_normalised_distances(e_s), d_t)
            loss_a = F.smooth_l1_loss(_angles(e_s), a_t)
            total = total + self.distance_weight * loss_d + self.angle_weight * loss_a
        return {"loss_rkd": self.weight * total}

    def extra_repr(self):
        return f"pairs={self.pairs}, weight={self.weight}, distance={self.distance_weight}, angle={self.angle_weight}"
