"""Variational information distillation."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from student_trainer.config import setting

from .base import DistillBatch
from .pairs import FeatureLoss, pool_to_common, shared_stages, spatial_problem


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """A ``N x C`` embedding as ``N x C x 1 x 1``; maps unchanged."""
    return x[:, :, None, None] if x.dim() == 2 else x


class VIDHead(nn.Module):
    """Gaussian q(t | s): mean from a 1x1-conv regressor, per-channel variance.

    Regressor: conv1x1(C_s, C_t) - ReLU - conv1x1(C_t, C_t) - ReLU - conv1x1(C_t, C_t), no
    biases (RepDistiller's ``VIDLoss(s, t, t)``: the middle width is the teacher's).
    Variance: ``softplus(log_scale) + eps``, ``log_scale`` initialised so the
    variance starts at ``init_pred_var``.
    """

    def __init__(self, c_s: int, c_t: int, init_pred_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(c_s, c_t, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c_t, c_t, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c_t, c_t, 1, bias=False))
        init = math.log(math.expm1(init_pred_var - eps))   # softplus^-1(init_pred_var - eps)
        self.log_scale = nn.Parameter(torch.full((c_t,), init))
        self.eps = eps

    def variance(self) -> torch.Tensor:
        return F.softplus(self.log_scale) + self.eps


@dataclass(frozen=True)
class VIDConfig:
    """VID's weight, initial variance and variance floor."""
    weight: float = setting(1.0, "VID weight beta (RepDistiller/mdistiller: 1)", flag="--vid-weight")
    init_pred_var: float = setting(5.0, "initial variance of q(t|s) (RepDistiller/mdistiller: 5.0)", flag="--vid-init-pred-var")
    eps: float = setting(1e-5, "variance floor (RepDistiller/mdistiller: 1e-5)", flag="--vid-eps")

    def __post_init__(self):
        if self.init_pred_var <= self.eps:
            raise ValueError("--vid-init-pred-var must be larger than --vid-eps")


class VID(FeatureLoss):
    """Variational information distillation: ``w * sum_pairs mean 0.5 * ((mu(f_s) - f_t)^2 / var + log var)``.

    Ahn, Hu, Damianou, Lawrence & Dai, "Variational Information Distillation for
    Knowledge Transfer" (CVPR 2019): maximise a variational lower bound on the
    mutual information between teacher and student features with a Gaussian
    q(t | s) whose mean is a regressor of the student feature and whose variance
    is learned per channel (the negative log-likelihood without its constant,
    averaged over images, channels and positions).  Follows RepDistiller's
    ``VIDLoss`` (from the authors' code): init_pred_var 5.0, eps 1e-5, beta 1
    (mdistiller ``FEAT_WEIGHT`` 1); the larger map is average-pooled to the
    smaller's size before the regressor.  Default pairs: every ``stageN`` both
    models have (RepDistiller ``feat[1:-1]``); teacher reduction ``none``.
    """
    name = "vid"
    about = "variational information distillation (Ahn et al. 2019) on stage features"
    config_type = VIDConfig

    def __init__(self, pairs, student_shapes, teacher_shapes, weight=1.0, init_pred_var=5.0, eps=1e-5):
        super().__init__(pairs)
        self.weight = float(weight)
        self.heads = nn.ModuleDict({
            f"{s}_to_{t}": VIDHead(student_shapes[s][0], teacher_shapes[t][0], init_pred_var, eps)
            for s, t in self.pairs})

    @classmethod
    def build(cls, config: VIDConfig, shapes, pairs):
        return cls(pairs, shapes.student, shapes.teacher, weight=config.weight,
                   init_pred_var=config.init_pred_var, eps=config.eps)

    @classmethod
    def default_pairs(cls, student_names, teacher_names):
        return [(n, n) for n in shared_stages(student_names, teacher_names)]

    @classmethod
    def pair_problem(cls, s_shape, t_shape):
        if len(s_shape) not in (1, 3) or len(t_shape) != len(s_shape):
            return "VID needs C x H x W maps (or C embeddings) on both sides"
        if len(s_shape) == 3:
            return spatial_problem(s_shape[1:], t_shape[1:])
        return None

    def forward(self, batch: DistillBatch):
        total = 0.0
        for s, t in self.pairs:
            head = self.heads[f"{s}_to_{t}"]
            f_s, f_t = pool_to_common(_as_map(batch.student_features[s]),
                                      _as_map(batch.teacher[t].detach().float()))
            mean = head.regressor(f_s).float()
            var = head.variance().view(1, -1, 1, 1)
            total = total + (0.5 * ((mean - f_t) ** 2 / var + torch.log(var))).mean()
        return {"loss_vid": self.weight * total}
