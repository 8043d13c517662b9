"""Probabilistic knowledge transfer."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from student_trainer.config import setting

from .base import DistillBatch
from .pairs import EmbeddingLoss

EPS = 1e-7


def _conditional(f: torch.Tensor) -> torch.Tensor:
    """Cosine-kernel conditional probabilities ``p(j|i)``, ``N x N``."""
    f = f.flatten(1)
    f = f / (f.norm(dim=1, keepdim=True) + EPS)
    k = (f @ f.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


@dataclass(frozen=True)
class PKTConfig:
    """PKT's weight."""
    weight: float = setting(30000.0, "PKT weight beta (RepDistiller/mdistiller: 30000)", flag="--pkt-weight")


class PKT(EmbeddingLoss):
    """Probabilistic knowledge transfer: ``w * mean_{i,j} p_t(j|i) log((p_t + eps)/(p_s + eps))``.

    Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge
    Transfer" (ECCV 2018).  Each side's conditional probabilities come from the
    cosine kernel ``K(a, b) = (cos(a, b) + 1) / 2`` normalised over each row; the
    divergence is RepDistiller's ``PKT.cosine_similarity_loss`` (eps 1e-7, the mean
    over all N x N entries, diagonal included).  beta = 30000 (RepDistiller
    ``-b 30000``, mdistiller ``FEAT_WEIGHT``); default pair ``pool:pool``, the
    embedding before fc, teacher reduction ``none`` (the embedding is already
    C per image).  Other features are flattened.
    """
    name = "pkt"
    about = "probabilistic knowledge transfer (Passalis & Tefas 2018) on the pool embedding"
    config_type = PKTConfig

    def __init__(self, pairs, weight: float = 30000.0):
        super().__init__(pairs)
        self.weight = float(weight)

    @classmethod
    def build(cls, config: PKTConfig, shapes, pairs):
        return cls(pairs, weight=config.weight)

    def forward(self, batch: DistillBatch):
        total = 0.0
        for s, t in self.pairs:
            p_s = _conditional(batch.student_features[s].float())
            p_t = _conditional(batch.teacher[t].detach().float())
            total = total + (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()
        return {"loss_pkt": self.weight * total}
