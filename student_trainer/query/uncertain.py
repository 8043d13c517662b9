"""UNIX-KD's policy: a no-grad uncertainty pass on all N, the k most uncertain, mixed (and its no-mix ablation)."""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from student_trainer.engine.timing import NULL_TIMER
from student_trainer.query.base import Query, QueryPolicy
from student_trainer.query.mixing import scaled_for_batch, select_and_mix
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


class Uncertain(QueryPolicy):
    """The k most uncertain images by the student's no-grad pass over all N, mixed (UNIX-KD) or not."""
    name = "unix"
    about = "UNIX-KD: the k most uncertain of N, mixed with partners (the more certain, the more mixed)"
    mixes = True

    def __init__(self, args, dataset_size: int = 0, context=None):
        super().__init__(args, dataset_size, context)
        self.b, self.w, self.measure, self.bn = args.b, args.w, args.selection, args.uncertainty_bn

    @classmethod
    def add_arguments(cls, group):
        group.add_argument("--b", type=float, default=32, help="rank where mixing reaches half strength (unix)")
        group.add_argument("--w", type=float, default=10.0, help="sharpness of the mixing sigmoid (unix)")
        group.add_argument("--selection", choices=sorted(UNCERTAINTY), default="entropy",
                           help="uncertainty measure (unix, unix-nomix)")
        group.add_argument("--uncertainty-bn", choices=("batch", "train", "eval"), default="train",
                           help="BatchNorm in the no-grad uncertainty pass: train = the reference's (see README)")

    @classmethod
    def validate(cls, args):
        super().validate(args)
        if args.w < 0:
            raise ValueError(f"--w must be >= 0, got {args.w}")

    def scores(self, student: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), bn_mode(student, self.bn):
            probs = F.softmax(student(images).float(), dim=1)
            return uncertainty(self.measure, probs, self.gen)

    def select(self, student, images, labels, indices, timer=NULL_TIMER, views=None):
        n = images.shape[0]
        with timer.phase("uncertainty"):
            scores = self.scores(student, images)
        with timer.phase("mixing"):
            k, b = scaled_for_batch(n, self.batch_size, self.k, self.b)
            lam = float(self.rng.beta(1.0, 1.0))  # drawn by unix-nomix too: both arms use the same stream
            if not self.mixes:
                lam = 0.0
            perm = torch.randperm(n, generator=self.gen).to(images.device)
            mb = select_and_mix(images, labels, scores, k=k, b=b, w=self.w, lam=lam, perm=perm)
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
    mixes = False

    @classmethod
    def add_arguments(cls, group):
        """unix's flags (--selection, --uncertainty-bn) serve it; --b and --w are unused."""
