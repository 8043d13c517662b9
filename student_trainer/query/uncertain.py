"""UNIX-KD's policy: a no-grad uncertainty pass on all N, the k most uncertain, mixed (and its no-mix ablation)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from student_trainer.engine.timing import NULL_TIMER
from student_trainer.config import setting
from student_trainer.query.base import Query, QueryPolicy, SubsetConfig
from student_trainer.query.mixing import scaled_for_batch, shuffle_and_mix
from student_trainer.query.uncertainty import UNCERTAINTY, uncertainty


@contextmanager
def bn_mode(model: nn.Module, mode: str):
    """How BatchNorm behaves in the no-grad uncertainty pass.

    ``train``: the reference implementation's behaviour: batch statistics, and the
    unmixed batch also updates the running statistics (twice per step in all).
    ``batch``: normalise with the batch's own statistics, exactly as the
    training forward does, but leave the running statistics untouched (momentum 0
    for the pass), so each step updates them once, from the images trained on.
    ``eval``: use the running statistics (noisy early in training).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    saved = [(m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in bns]
    if mode == "eval":
        model.eval()
    elif mode == "batch":
        model.train()
        for m in bns:
            m.momentum = 0.0
    elif mode == "train":
        model.train()
    else:
        raise ValueError(f"unknown --uncertainty-bn {mode!r}; choose batch, train or eval")
    try:
        yield
    finally:
        model.train(was_training)
        if mode == "batch":
            for m, momentum, tracked in saved:
                m.momentum = momentum
                if tracked is not None:
                    m.num_batches_tracked.copy_(tracked)


BN_MODES = ("batch", "train", "eval")


def uncertainty_scores(student: nn.Module, images: torch.Tensor, measure: str = "entropy", bn: str = "train",
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """(N,) how unsure ``student`` is of each image (higher: less sure), from one pass without gradients
    (``torch.inference_mode``), BatchNorm as ``bn`` says (``bn_mode``); ``measure`` names an ``UNCERTAINTY``
    entry (``random`` draws from ``generator``)."""
    with torch.inference_mode(), bn_mode(student, bn):
        probs = F.softmax(student(images).float(), dim=1)
        return uncertainty(measure, probs, generator)


@dataclass(frozen=True)
class UncertaintyConfig(SubsetConfig):
    """The k most uncertain of N, by the student's no-grad pass."""
    selection: str = setting("entropy", "uncertainty measure (unix, unix-nomix)", flag="--selection",
                             choices=tuple(sorted(UNCERTAINTY)))
    uncertainty_bn: str = setting("train", "BatchNorm in the no-grad uncertainty pass: train = the reference's "
                                  "(see README)", flag="--uncertainty-bn", choices=BN_MODES)

    def __post_init__(self):
        super().__post_init__()
        if self.selection not in UNCERTAINTY:
            raise ValueError(f"unknown --selection {self.selection!r}; choose one of {', '.join(sorted(UNCERTAINTY))}")
        if self.uncertainty_bn not in BN_MODES:
            raise ValueError(f"unknown --uncertainty-bn {self.uncertainty_bn!r}; choose batch, train or eval")


@dataclass(frozen=True)
class UnixConfig(UncertaintyConfig):
    """UNIX-KD's mixing of the selected images: the more certain, the more mixed."""
    b: float = setting(32.0, "rank where mixing reaches half strength (unix)", flag="--b")
    w: float = setting(10.0, "sharpness of the mixing sigmoid (unix)", flag="--w")

    def __post_init__(self):
        super().__post_init__()
        if self.w < 0:
            raise ValueError(f"--w must be >= 0, got {self.w}")

    def rank_share(self, world_size: int) -> dict:
        """k/P of N/P images, and the mixing midpoint b/P: each rank mixes its share as the batch would."""
        return super().rank_share(world_size) | {"b": self.b / world_size}


class Uncertain(QueryPolicy):
    """The k most uncertain images by the student's no-grad pass over all N, mixed (UNIX-KD) or not."""
    name = "unix"
    about = "UNIX-KD: the k most uncertain of N, mixed with partners (the more certain, the more mixed)"
    config_type = UnixConfig
    mixes = True

    def __init__(self, config: UncertaintyConfig | None = None, dataset_size: int = 0, context=None):
        super().__init__(config, dataset_size, context)
        c = self.config
        self.measure, self.bn = c.selection, c.uncertainty_bn
        self.b, self.w = (c.b, c.w) if self.mixes else (0.0, 0.0)  # no mixing: nothing to scale

    def scores(self, student: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return uncertainty_scores(student, images, self.measure, self.bn, self.gen)

    def select(self, student, images, labels, indices, timer=NULL_TIMER, views=None):
        n = images.shape[0]
        with timer.phase("uncertainty"):
            scores = self.scores(student, images)
        with timer.phase("mixing"):
            k, b = scaled_for_batch(n, self.batch_size, self.k, self.b)
            lam = float(self.rng.beta(1.0, 1.0))  # drawn by unix-nomix too: both arms use the same stream
            if not self.mixes:
                lam = 0.0
            mb = shuffle_and_mix(images, labels, scores, k=k, b=b, w=self.w, lam=lam, generator=self.gen)
        parts = {"uncertainty_selected": scores[mb.selected].mean().item()}
        if self.mixes:
            parts["lambda"] = lam
        if len(mb.dropped):
            parts["uncertainty_dropped"] = scores[mb.dropped].mean().item()
        chosen = None
        if views is not None:
            chosen = views.take(mb.selected.cpu())
            if self.mixes:
                chosen = chosen.mixed_with(views.take(mb.partners.cpu()), mb.mix)
        return Query(mb.images, mb.labels_a, mb.labels_b, mb.mix, indices[mb.selected], choosing_forward=n,
                     parts=parts, views=chosen)


class UncertainUnmixed(Uncertain):
    name = "unix-nomix"
    about = "UNIX-KD's uncertainty selection of k of N, without mixing (ablation)"
    config_type = UncertaintyConfig
    mixes = False
