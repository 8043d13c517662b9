"""What every query policy shares: the ``Query`` it returns and the ``QueryPolicy`` contract.

The paper's point is that UNIX-KD "only changes the input": a policy picks and
prepares the images; any distillation loss (``student_trainer.distill``) is then
computed on the teacher's answers for them.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from common.views import Views
from student_trainer.engine.timing import NULL_TIMER, PhaseTimer
from student_trainer.query.mixing import scaled_for_batch


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
    views: Views | None = None   # each row's recipe (None: the data set's views are not recipes)

    @property
    def teacher_rows(self) -> int:
        return self.images.shape[0] if self.ask is None else int(self.ask.sum())

    def asked_images(self) -> torch.Tensor:
        return self.images if self.ask is None else self.images[self.ask]

    def asked_views(self) -> Views | None:
        if self.views is None or self.ask is None:
            return self.views
        return self.views.take(self.ask.cpu().nonzero().flatten())


def unmixed(images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, keep: torch.Tensor | None = None,
            views: Views | None = None, **extra) -> Query:
    if keep is not None:
        images, labels, indices = images[keep], labels[keep], indices[keep]
        views = None if views is None else views.take(keep)
    return Query(images, labels, labels, torch.zeros(labels.shape[0], device=images.device), indices, views=views,
                 **extra)


@dataclass
class PolicyContext:
    """What some policies need beyond the flags: the training split in memory (to render a stored view) and
    the shelf of stored views in the answer store."""
    stored: object | None = None     # common.views.StoredImages
    shelf: object | None = None      # student_trainer.query.stored_views.ViewShelf


class QueryPolicy:
    """Subclasses set ``name``/``about`` and implement ``select``; RNG state rides in checkpoints."""
    name: ClassVar[str] = ""
    about: ClassVar[str] = ""
    sends_all: ClassVar[bool] = False   # True: the teacher sees every image (k = N)
    uses_k: ClassVar[bool] = True       # False: --k plays no part (the policy sends all, or N/R)
    # Why the policy cannot be split over several processes (state kept per data-set index); "" if it can.
    per_image_state: ClassVar[str] = ""

    needs_store: ClassVar[bool] = False  # True: the policy keeps answers in --answer-store (``context.shelf``)

    def __init__(self, args: argparse.Namespace, dataset_size: int = 0, context: PolicyContext | None = None):
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
               indices: torch.Tensor, timer: PhaseTimer = NULL_TIMER, views: Views | None = None) -> Query:
        """``views``: the batch's rows as recipes, where the data set's views are recipes; a policy passes
        on the recipes of the rows it keeps (mixed ones with their partners)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.gen.set_state(state["gen"])
