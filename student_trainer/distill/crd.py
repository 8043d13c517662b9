"""Contrastive representation distillation."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from student_trainer.config import setting

from .base import DistillBatch
from .pairs import EmbeddingLoss

NEGATIVES = ("other-class", "uniform")
NCE_EPS = 1e-7
RESAMPLE_ROUNDS = 20


class Embed(nn.Module):
    """Flatten, linear to ``feat_dim``, L2-normalise (RepDistiller/mdistiller ``Embed``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.flatten(1)).float()
        return x / x.norm(dim=1, keepdim=True)


def _nce(p: torch.Tensor, n_data: int) -> torch.Tensor:
    """NCE loss on ``b x (1 + K)`` normalised scores, positive first (``ContrastLoss``)."""
    k = p.shape[1] - 1
    m_pn = k / float(n_data)            # K * P_noise, uniform noise over the data set
    log_d1 = torch.log(p[:, 0] / (p[:, 0] + m_pn + NCE_EPS))
    log_d0 = torch.log(m_pn / (p[:, 1:] + m_pn + NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


@dataclass(frozen=True)
class CRDConfig:
    """CRD's weight, embedding, NCE and negatives (RepDistiller's defaults); ``seed``: the run's, for its
    draws of negatives."""
    weight: float = setting(0.8, "CRD weight beta (RepDistiller/mdistiller: 0.8)", flag="--crd-weight")
    feat_dim: int = setting(128, "embedding size (RepDistiller: 128)", flag="--crd-feat-dim")
    nce_k: int = setting(16384, "negatives per anchor, capped at data-set size - 1 (RepDistiller: 16384)",
                         flag="--crd-nce-k")
    nce_t: float = setting(0.07, "NCE temperature (RepDistiller: 0.07)", flag="--crd-nce-t")
    nce_m: float = setting(0.5, "memory-bank momentum (RepDistiller: 0.5)", flag="--crd-nce-m")
    negatives: str = setting("other-class", "other-class: RepDistiller's exact mode; uniform: any other image",
                             flag="--crd-negatives", choices=NEGATIVES)
    seed: int = setting(0)

    def __post_init__(self):
        if self.negatives not in NEGATIVES:
            raise ValueError(f"--crd-negatives {self.negatives!r}: choose one of {', '.join(NEGATIVES)}")


class CRD(EmbeddingLoss):
    """Contrastive representation distillation: ``w * (L_nce(student anchors) + L_nce(teacher anchors))``.

    Tian, Krishnan & Isola, "Contrastive Representation Distillation" (ICLR 2020),
    following their RepDistiller code (and mdistiller's copy): both embeddings
    (student and teacher ``pool``, flattened) go through a learnable linear head to
    ``feat_dim`` = 128 and are L2-normalised; two memory banks of ``dataset_size x
    feat_dim`` hold each side's embedding of every training image.  For a student
    anchor ``s_i`` of data-set index ``y_i`` the scores are
    ``exp(<s_i, M_t[j]> / T) / Z_s`` for ``j = y_i`` (positive) and K negatives; the
    teacher anchors are scored against ``M_s`` alike.  ``Z`` is set once, on the
    first batch, to ``mean(exp(...)) * dataset_size`` (stored in a buffer).  The
    NCE loss with uniform noise ``P_n = 1 / dataset_size`` is
    ``-(sum log(P_pos / (P_pos + K P_n)) + sum log(K P_n / (P_neg + K P_n))) / b``.
    After the loss the banks move towards the batch:
    ``M[y_i] = normalise(m * M[y_i] + (1 - m) * e_i)``.

    Defaults: feat_dim 128, nce_k 16384 (capped at dataset_size - 1), T 0.07,
    momentum 0.5, weight 0.8 (RepDistiller ``-b 0.8``, mdistiller ``CFG.CRD``).

    Negatives (``--crd-negatives``): ``other-class`` (default) is RepDistiller's
    ``mode='exact'``: K indices drawn from images of other classes.  The data
    loader is not asked for labels; instead the loss records each index's label
    (``labels_a``) in a buffer as images pass, and redraws negatives whose recorded
    label equals the anchor's (up to 20 rounds).  Until an index has been seen
    its label is unknown and it may serve as a negative: during the first epoch
    some same-class negatives slip in.  ``uniform`` draws from every other index
    (CMC's unsupervised sampler).  Both draw with replacement (RepDistiller's
    exact mode draws without); the anchor's own index is never a negative.

    Mixed images (UNIX-KD): an image takes the data-set index of its main part,
    the one weighted ``1 - mix >= 0.5`` (``batch.indices``), and the label
    ``labels_a``; its embedding is the positive of, and updates the bank row of,
    that index.  Indices in a batch should be distinct; if one repeats, the last
    image with it updates the bank.

    Randomness (bank initialisation and negative sampling) comes from a CPU
    ``torch.Generator`` seeded with ``--seed``; its state is saved in this
    module's ``state_dict`` (``_extra_state``) with the banks, so a resumed run
    draws the same negatives.
    """
    name = "crd"
    about = "contrastive representation distillation (Tian et al. 2020) on the pool embedding"
    config_type = CRDConfig
    max_pairs = 1
    per_image_state = "--loss crd keeps a memory bank of every training image"

    def __init__(self, pairs, student_shapes, teacher_shapes, dataset_size: int, seed: int = 0,
                 weight=0.8, feat_dim=128, nce_k=16384, nce_t=0.07, nce_m=0.5, negatives="other-class"):
        super().__init__(pairs)
        if dataset_size < 2:
            raise ValueError(f"CRD needs a data set of at least 2 images (dataset_size={dataset_size})")
        if negatives not in NEGATIVES:
            raise ValueError(f"--crd-negatives {negatives!r}: choose one of {', '.join(NEGATIVES)}")
        (s, t), = self.pairs
        self.weight, self.nce_t, self.nce_m = float(weight), float(nce_t), float(nce_m)
        self.n_data, self.nce_k, self.negatives = int(dataset_size), min(int(nce_k), dataset_size - 1), negatives
        self.embed_s = Embed(math.prod(student_shapes[s]), feat_dim)
        self.embed_t = Embed(math.prod(teacher_shapes[t]), feat_dim)
        self.generator = torch.Generator().manual_seed(int(seed))
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        for bank in ("memory_s", "memory_t"):
            init = torch.rand(dataset_size, feat_dim, generator=self.generator) * (2 * stdv) - stdv
            self.register_buffer(bank, init)
        self.register_buffer("z", torch.full((2,), -1.0))                       # Z_s, Z_t; < 0: not set
        self.register_buffer("labels", torch.full((dataset_size,), -1, dtype=torch.long))  # -1: not seen

    @classmethod
    def build(cls, config: CRDConfig, shapes, pairs):
        return cls(pairs, shapes.student, shapes.teacher, shapes.dataset_size, seed=config.seed,
                   weight=config.weight, feat_dim=config.feat_dim, nce_k=config.nce_k,
                   nce_t=config.nce_t, nce_m=config.nce_m, negatives=config.negatives)

    # -- the generator travels with the state_dict
    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state):
        self.generator.set_state(state["generator"])

    def sample(self, anchors: torch.Tensor, anchor_labels: torch.Tensor) -> torch.Tensor:
        """``b x (1 + K)`` data-set indices on the CPU: the anchor's own, then K negatives."""
        b = len(anchors)
        draw = torch.randint(0, self.n_data - 1, (b, self.nce_k), generator=self.generator)
        neg = draw + (draw >= anchors[:, None]).long()           # skip the anchor's own index
        if self.negatives == "other-class":
            labels = self.labels.cpu()
            for _ in range(RESAMPLE_ROUNDS):
                same = labels[neg] == anchor_labels[:, None]
                count = int(same.sum())
                if not count:
                    break
                redraw = torch.randint(0, self.n_data - 1, (count,), generator=self.generator)
                rows = same.nonzero()[:, 0]
                neg[same] = redraw + (redraw >= anchors[rows]).long()
        return torch.cat([anchors[:, None], neg], dim=1)

    def forward(self, batch: DistillBatch):
        (s, t), = self.pairs
        e_s = self.embed_s(batch.student_features[s])
        e_t = self.embed_t(batch.teacher[t].detach().float())
        anchors = batch.indices.long().cpu()
        anchor_labels = batch.labels_a.long().cpu()
        if self.negatives == "other-class":
            self.labels[anchors.to(self.labels.device)] = anchor_labels.to(self.labels.device)
        idx = self.sample(anchors, anchor_labels).to(e_s.device)
        b, k1 = idx.shape
        w_t = self.memory_t[idx.flatten()].view(b, k1, -1)       # teacher bank: scores student anchors
        w_s = self.memory_s[idx.flatten()].view(b, k1, -1)
        out_s = torch.exp(torch.bmm(w_t, e_s.unsqueeze(2)).squeeze(2) / self.nce_t)
        out_t = torch.exp(torch.bmm(w_s, e_t.unsqueeze(2)).squeeze(2) / self.nce_t)
        with torch.no_grad():
            if self.z[0] < 0:
                self.z[0] = out_s.mean() * self.n_data
            if self.z[1] < 0:
                self.z[1] = out_t.mean() * self.n_data
        loss = _nce(out_s / self.z[0], self.n_data) + _nce(out_t / self.z[1], self.n_data)
        self._update_banks(idx[:, 0], e_s.detach(), e_t.detach())
        return {"loss_crd": self.weight * loss}

    @torch.no_grad()
    def _update_banks(self, y: torch.Tensor, e_s: torch.Tensor, e_t: torch.Tensor) -> None:
        repeated_later = torch.triu(y[:, None] == y[None, :], diagonal=1).any(1)
        keep = ~repeated_later
        y, e_s, e_t = y[keep], e_s[keep], e_t[keep]
        for bank, e in ((self.memory_s, e_s), (self.memory_t, e_t)):
            row = bank[y] * self.nce_m + e * (1 - self.nce_m)
            bank[y] = row / row.norm(dim=1, keepdim=True)

    def extra_repr(self):
        return (f"pairs={self.pairs}, weight={self.weight}, n_data={self.n_data}, nce_k={self.nce_k}, "
                f"T={self.nce_t}, momentum={self.nce_m}, negatives={self.negatives}")
