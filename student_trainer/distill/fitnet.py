"""FitNets hints with a learnable regressor."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from student_trainer.config import setting

from .base import DistillBatch
from .pairs import FeatureLoss, shared_stages


def _regressor_conv(s_shape, t_shape) -> nn.Module | None:
    """The conv of mdistiller's ``ConvReg`` mapping student C x H x W to the teacher's.

    Same size: 1x1 conv.  Student twice the size: 3x3 conv, stride 2.  Student half
    the size: 4x4 transposed conv, stride 2.  Student larger otherwise: a valid conv
    of kernel (1 + sH - tH, 1 + sW - tW).  Otherwise None (cannot be matched).
    """
    (sc, sh, sw), (tc, th, tw) = s_shape, t_shape
    if (sh, sw) == (2 * th, 2 * tw):
        return nn.Conv2d(sc, tc, kernel_size=3, stride=2, padding=1)
    if (2 * sh, 2 * sw) == (th, tw):
        return nn.ConvTranspose2d(sc, tc, kernel_size=4, stride=2, padding=1)
    if sh >= th and sw >= tw:
        return nn.Conv2d(sc, tc, kernel_size=(1 + sh - th, 1 + sw - tw))
    return None


class ConvReg(nn.Sequential):
    """conv (see ``_regressor_conv``) + BatchNorm + ReLU, as mdistiller/RepDistiller's ``ConvReg``."""

    def __init__(self, s_shape, t_shape):
        conv = _regressor_conv(s_shape, t_shape)
        if conv is None:
            raise ValueError(f"no FitNet regressor maps {s_shape} to {t_shape}")
        super().__init__(conv, nn.BatchNorm2d(t_shape[0]), nn.ReLU())


@dataclass(frozen=True)
class FitNetConfig:
    """FitNet's hint weight."""
    weight: float = setting(100.0, "FitNet hint weight beta (mdistiller/RepDistiller: 100)", flag="--fitnet-weight")


class FitNet(FeatureLoss):
    """FitNets hint: ``w * sum_pairs mean (r(f_s) - f_t)^2`` with a learnable regressor r.

    Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015), trained jointly
    with the task loss as in mdistiller's ``FitNet`` and RepDistiller's ``HintLoss``
    (no separate hint stage).  r is their ``ConvReg``: a conv mapping the student's
    channels and size to the teacher's, BatchNorm, ReLU (the teacher's stage
    outputs are post-ReLU).  beta = 100 (mdistiller ``FEAT_WEIGHT``, RepDistiller
    ``-b 100``); the default pair is the middle stage both models have, ``stage2``
    for the zoo (their ``hint_layer = 2``).  The teacher sends full maps
    (reduction ``none``); the regressor is trained with the student.
    """
    name = "fitnet"
    about = "FitNets hint (Romero et al. 2015) with a conv regressor, middle stage"
    config_type = FitNetConfig

    def __init__(self, pairs, student_shapes, teacher_shapes, weight: float = 100.0):
        super().__init__(pairs)
        self.weight = float(weight)
        self.regressors = nn.ModuleDict({
            f"{s}_to_{t}": ConvReg(tuple(student_shapes[s]), tuple(teacher_shapes[t])) for s, t in self.pairs})

    @classmethod
    def build(cls, config: FitNetConfig, shapes, pairs):
        return cls(pairs, shapes.student, shapes.teacher, weight=config.weight)

    @classmethod
    def default_pairs(cls, student_names, teacher_names):
        shared = shared_stages(student_names, teacher_names)
        return [(shared[(len(shared) - 1) // 2],) * 2] if shared else []

    @classmethod
    def pair_problem(cls, s_shape, t_shape):
        if len(s_shape) != 3 or len(t_shape) != 3:
            return "FitNet needs C x H x W feature maps on both sides"
        if _regressor_conv(s_shape, t_shape) is None:
            return ("the student map is smaller than the teacher's (and not exactly half), which "
                    "mdistiller's ConvReg cannot map")
        return None

    def forward(self, batch: DistillBatch):
        total = 0.0
        for s, t in self.pairs:
            pred = self.regressors[f"{s}_to_{t}"](batch.student_features[s])
            total = total + F.mse_loss(pred.float(), batch.teacher[t].detach().float())
        return {"loss_fitnet": self.weight * total}
