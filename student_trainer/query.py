"""Query policies: which images of a batch the teacher is asked about (and the student trains on).

The paper's point is that UNIX-KD "only changes the input": a policy picks and
prepares the images; any distillation loss (``student_trainer.distill``) is
then computed on the teacher's answers for them. A new policy is one class and
one entry in ``POLICIES``.

``all``         conventional KD: every image, unmixed (k = N)
``unix``        UNIX-KD: a no-grad uncertainty pass on all N, the k most uncertain, mixed
``unix-nomix``  the same selection without mixing (an ablation)
``random``      a random k of N, unmixed, no uncertainty pass (the simplest way to save teacher images)
``cached``      every image, unmixed; each image's answer is asked for once every R visits and
                reused in between (beyond the paper: fewer teacher images, no uncertainty pass)
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from student_trainer.mixing import scaled_for_batch, select_and_mix
from student_trainer.timing import NULL_TIMER, PhaseTimer
from student_trainer.uncertainty import UNCERTAINTY, uncertainty


@dataclass
class Query:
    """The images the teacher sees and the student trains on, with their (mixed) labels."""
    images: torch.Tensor
    labels_a: torch.Tensor
    labels_b: torch.Tensor
    mix: torch.Tensor            # weight of labels_b; 0 for unmixed images
    indices: torch.Tensor        # data-set index of each image's main (1 - mix) part
    choosing_forward: int = 0    # student forward images spent choosing (the uncertainty pass)
    parts: dict[str, float] = field(default_factory=dict)
    ask: torch.Tensor | None = None  # rows the teacher is asked about (None: every row)
    known: dict[str, torch.Tensor] = field(default_factory=dict)  # remembered answers for the other rows

    @property
    def teacher_rows(self) -> int:
        return self.images.shape[0] if self.ask is None else int(self.ask.sum())

    def asked_images(self) -> torch.Tensor:
        return self.images if self.ask is None else self.images[self.ask]


def unmixed(images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, keep: torch.Tensor | None = None,
            **extra) -> Query:
    if keep is not None:
        images, labels, indices = images[keep], labels[keep], indices[keep]
    return Query(images, labels, labels, torch.zeros(labels.shape[0], device=images.device), indices, **extra)


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


class QueryPolicy:
    """Subclasses set ``name``/``about`` and implement ``select``; RNG state rides in checkpoints."""
    name: ClassVar[str] = ""
    about: ClassVar[str] = ""
    sends_all: ClassVar[bool] = False   # True: the teacher sees every image (k = N)

    def __init__(self, args: argparse.Namespace, dataset_size: int = 0):
        self.batch_size = args.batch_size
        self.k = args.k
        self.rng = np.random.default_rng(args.seed)
        self.gen = torch.Generator().manual_seed(args.seed)

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """Flags only this policy reads."""

    @classmethod
    def validate(cls, args: argparse.Namespace) -> None:
        """Flag values this policy cannot work with, as one line."""
        if not 1 <= args.k <= args.batch_size:
            raise ValueError(f"--k must be between 1 and --batch-size {args.batch_size}, got {args.k}")

    def k_for(self, n: int) -> int:
        return scaled_for_batch(n, self.batch_size, self.k, 0.0)[0]

    @property
    def teacher_images_per_batch(self) -> int:
        """k of a full batch, as a label (the counters say what was really sent)."""
        return self.batch_size if self.sends_all else self.k

    def complete(self, query: Query, answer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The answers for every row of ``query`` from what the teacher sent back (here: all of them)."""
        return answer

    def select(self, student: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               indices: torch.Tensor, timer: PhaseTimer = NULL_TIMER) -> Query:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.gen.set_state(state["gen"])


class AllImages(QueryPolicy):
    name = "all"
    about = "every image, unmixed (conventional KD; k = N)"
    sends_all = True

    @classmethod
    def validate(cls, args):
        pass

    def select(self, student, images, labels, indices, timer=NULL_TIMER):
        return unmixed(images, labels, indices)


class RandomSubset(QueryPolicy):
    name = "random"
    about = "a random k of N, unmixed, no uncertainty pass"

    def select(self, student, images, labels, indices, timer=NULL_TIMER):
        with timer.phase("mixing"):
            keep = torch.randperm(images.shape[0], generator=self.gen)[:self.k_for(images.shape[0])]
            return unmixed(images, labels, indices, keep.to(images.device))


class Uncertain(QueryPolicy):
    """The k most uncertain images by the student's no-grad pass over all N, mixed (UNIX-KD) or not."""
    name = "unix"
    about = "UNIX-KD: the k most uncertain of N, mixed with partners (the more certain, the more mixed)"
    mixes = True

    def __init__(self, args, dataset_size: int = 0):
        super().__init__(args, dataset_size)
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
        with torch.no_grad(), bn_mode(student, self.bn):
            probs = F.softmax(student(images).float(), dim=1)
            return uncertainty(self.measure, probs, self.gen)

    def select(self, student, images, labels, indices, timer=NULL_TIMER):
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
        return Query(mb.images, mb.labels_a, mb.labels_b, mb.mix, indices[mb.selected], choosing_forward=n,
                     parts=parts)


class UncertainUnmixed(Uncertain):
    name = "unix-nomix"
    about = "UNIX-KD's uncertainty selection of k of N, without mixing (ablation)"
    mixes = False

    @classmethod
    def add_arguments(cls, group):
        """unix's flags (--selection, --uncertainty-bn) serve it; --b and --w are unused."""


class RememberedAnswers(QueryPolicy):
    """Every image trains every step; its teacher answer is refreshed once every R visits.

    Beyond the paper. UNIX-KD pays a no-grad pass over all N images each step and
    still asks the teacher about k of them; here each answer is asked for once and
    reused for R visits of the same image (another crop and flip of it: the answer
    is for the image as it was augmented then). No uncertainty pass, no mixing;
    the teacher sees about N/R images a step after the first epoch, when every
    image is new. Image i is due when ``(visits + i) % R == 0``, so the refreshes
    are spread over the steps instead of falling in one epoch. R = 1 is KD exactly.
    """
    name = "cached"
    about = ("every image, unmixed; each image's teacher answer is asked for once every --refresh-every "
             "visits and reused in between (beyond the paper)")

    def __init__(self, args, dataset_size: int = 0):
        super().__init__(args, dataset_size)
        if dataset_size < 1:
            raise ValueError("--query cached needs the training set's size")
        self.refresh = args.refresh_every
        self.visits = torch.zeros(dataset_size, dtype=torch.long)
        self.answered = torch.zeros(dataset_size, dtype=torch.bool)
        self.store: dict[str, torch.Tensor] = {}

    @classmethod
    def add_arguments(cls, group):
        group.add_argument("--refresh-every", type=int, default=2, metavar="R",
                           help="cached: ask the teacher about each image once every R visits (1: every time, = KD)")

    @classmethod
    def validate(cls, args):
        if args.refresh_every < 1:
            raise ValueError(f"--refresh-every must be at least 1, got {args.refresh_every}")

    @property
    def teacher_images_per_batch(self) -> int:
        return round(self.batch_size / self.refresh)

    def select(self, student, images, labels, indices, timer=NULL_TIMER):
        with timer.phase("mixing"):
            idx = indices.cpu()
            ask = ~self.answered[idx] | ((self.visits[idx] + idx) % self.refresh == 0)
            self.visits[idx] += 1
            reuse = idx[~ask]
            known = {key: stored[reuse] for key, stored in self.store.items()} if len(reuse) else {}
            q = unmixed(images, labels, indices, ask=ask.to(images.device), known=known)
            q.parts = {"teacher_fraction": q.teacher_rows / max(images.shape[0], 1)}
            return q

    def complete(self, query, answer):
        if query.ask is None or not answer and not query.known:
            return answer
        ask = query.ask.cpu()
        idx = query.indices.cpu()[ask]
        full = {}
        for key, fresh in answer.items():
            fresh = fresh.cpu()
            if key not in self.store:
                self.store[key] = torch.zeros(len(self.visits), *fresh.shape[1:], dtype=fresh.dtype)
            self.store[key][idx] = fresh
            out = torch.empty(len(ask), *fresh.shape[1:], dtype=fresh.dtype)
            out[ask] = fresh
            if key in query.known:
                out[~ask] = query.known[key].to(fresh.dtype)
            full[key] = out
        for key, remembered in query.known.items():
            if key not in full:  # nothing asked this step: every row remembered
                full[key] = remembered
        self.answered[idx] = True
        return full

    def state_dict(self):
        return {**super().state_dict(), "visits": self.visits.clone(), "answered": self.answered.clone(),
                "store": {k: v.clone() for k, v in self.store.items()}}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.visits.copy_(state["visits"])
        self.answered.copy_(state["answered"])
        self.store = {k: v.clone() for k, v in state["store"].items()}


POLICIES: dict[str, type[QueryPolicy]] = {
    p.name: p for p in (AllImages, Uncertain, UncertainUnmixed, RandomSubset, RememberedAnswers)}


def build_policy(args: argparse.Namespace, dataset_size: int = 0) -> QueryPolicy:
    return POLICIES[args.query](args, dataset_size)
