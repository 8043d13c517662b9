"""Decoupled knowledge distillation (logits only)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from student_trainer.config import setting

from .base import LOGITS, DistillBatch, DistillLoss, StepContext

PAPER_EPOCHS = 240   # the CIFAR-100 schedule DKD's 20-epoch warm-up was set for


def _binary_log_probs(log_p: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """``N x 2``: log of (p_target, p_not_target) from full log-probabilities."""
    log_pt = log_p.masked_select(target_mask).view(-1, 1)
    log_po = torch.logsumexp(log_p.masked_fill(target_mask, float("-inf")), dim=1, keepdim=True)
    return torch.cat([log_pt, log_po], dim=1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_j p_j (log p_j - log q_j) per row, p given as log-probabilities.

    Log-probabilities are clamped at -1e4 (a probability that is exactly 0 in
    float32) so a vanishing class gives 0, not 0 * inf, in the value and gradient.
    """
    log_p, log_q = log_p.clamp_min(-1e4), log_q.clamp_min(-1e4)
    return (log_p.exp() * (log_p - log_q)).sum(1)


@dataclass(frozen=True)
class DKDConfig:
    """DKD's weights, temperature and warm-up (mdistiller's defaults)."""
    weight: float = setting(1.0, "DKD loss weight (mdistiller: 1)", flag="--dkd-weight")
    alpha: float = setting(1.0, "TCKD weight alpha (mdistiller: 1)", flag="--dkd-alpha")
    beta: float = setting(8.0, "NCKD weight beta (mdistiller: 8)", flag="--dkd-beta")
    T: float = setting(4.0, "DKD temperature (mdistiller: 4)", flag="--dkd-T")
    warmup: float = setting(20.0, "warm-up epochs of a 240-epoch run, scaled to shorter runs (mdistiller: 20)",
                            flag="--dkd-warmup")


class DKD(DistillLoss):
    """Decoupled KD: ``w * warm(epoch) * (alpha * TCKD + beta * NCKD)``.

    Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation" (CVPR 2022).
    TCKD is T^2 KL between the binary (target, all others) distributions of
    teacher and student at temperature T; NCKD is T^2 KL between their
    distributions over the non-target classes (renormalised among themselves);
    both are batch means.  Computed in log space (mdistiller takes ``log`` of
    summed probabilities and masks the target logit with -1000; the value is the
    same up to rounding).

    Defaults are mdistiller's CIFAR-100 config (``CFG.DKD``): alpha 1, beta 8,
    T 4, warm-up 20 epochs (the factor ``min(epoch / 20, 1)`` with 1-based epochs),
    the loss weight 1 (CE weight 1.0 there: set the trainer's ``--ce-weight 1``).

    Warm-up in shorter runs: the warm-up covers the same *fraction* of the run as
    20 of the paper's 240 epochs.  With E = ``context.epochs`` < 240 the warm-up
    length becomes ``20 * E / 240`` epochs, and the factor is
    ``min(epoch / (20 * E / 240), 1)`` = ``min((epoch / E) / (20 / 240), 1)``;
    runs of 240 epochs or more use mdistiller's ``min(epoch / 20, 1)`` unchanged.
    The factor changes per epoch, as in mdistiller (in runs of 12 epochs or fewer
    it is 1 from the first epoch).  ``--dkd-warmup 0`` turns the warm-up off.

    Mixed images: the "target class" is ``labels_a``, the label of the image's
    main part (weight ``1 - mix >= 0.5``); the mixed-in class counts as a
    non-target class.
    """
    name = "dkd"
    about = "decoupled KD (Zhao et al. 2022) on the logits"
    config_type = DKDConfig

    def __init__(self, alpha=1.0, beta=8.0, T=4.0, warmup=20.0, weight=1.0):
        super().__init__()
        self.alpha, self.beta, self.T = float(alpha), float(beta), float(T)
        self.warmup, self.weight = float(warmup), float(weight)

    @classmethod
    def build(cls, config: DKDConfig, shapes, pairs):
        return cls(alpha=config.alpha, beta=config.beta, T=config.T, warmup=config.warmup, weight=config.weight)

    def teacher_outputs(self):
        return [LOGITS]

    def warmup_factor(self, context: StepContext) -> float:
        if self.warmup <= 0:
            return 1.0
        warmup = self.warmup * min(1.0, context.epochs / PAPER_EPOCHS)
        return min(context.epoch / warmup, 1.0)

    def forward(self, batch: DistillBatch):
        s = batch.student_logits.float() / self.T
        t = batch.teacher[LOGITS.key].detach().float() / self.T
        target = F.one_hot(batch.labels_a.long(), s.shape[1]).bool()
        log_ps, log_pt = F.log_softmax(s, 1), F.log_softmax(t, 1)
        tckd = _kl(_binary_log_probs(log_pt, target), _binary_log_probs(log_ps, target))
        others = (~target)
        n, c = s.shape
        nckd = _kl(F.log_softmax(t[others].view(n, c - 1), 1), F.log_softmax(s[others].view(n, c - 1), 1))
        loss = (self.alpha * tckd + self.beta * nckd).mean() * self.T ** 2
        return {"loss_dkd": self.weight * self.warmup_factor(batch.context) * loss}

    def extra_repr(self):
        return f"alpha={self.alpha}, beta={self.beta}, T={self.T}, warmup={self.warmup}, weight={self.weight}"
