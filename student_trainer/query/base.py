"""What every query policy shares: the ``Query`` it returns and the ``QueryPolicy`` contract.

The paper's point is that UNIX-KD "only changes the input": a policy picks and
prepares the images; any distillation loss (``student_trainer.distill``) is then
computed on the teacher's answers for them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from common.views import Views
from student_trainer.config import setting
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
    verify: torch.Tensor | None = None  # rows answered from a store whose answer the teacher is asked again, to check

    @property
    def teacher_rows(self) -> int:
        return self.images.shape[0] if self.ask is None else int(self.ask.sum())

    def asked_images(self) -> torch.Tensor:
        return self.images if self.ask is None else self.images[self.ask]

    def asked_views(self) -> Views | None:
        if self.views is None or self.ask is None:
            return self.views
        return self.views.take(self.ask.cpu().nonzero().flatten())

    @property
    def verify_rows(self) -> int:
        return 0 if self.verify is None else int(self.verify.sum())

    def verify_images(self) -> torch.Tensor:
        return self.images[self.verify]

    def verify_views(self) -> Views | None:
        return None if self.views is None else self.views.take(self.verify.cpu().nonzero().flatten())


def unmixed(images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, keep: torch.Tensor | None = None,
            views: Views | None = None, **extra) -> Query:
    if keep is not None:
        images, labels, indices = images[keep], labels[keep], indices[keep]
        views = None if views is None else views.take(keep)
    return Query(images, labels, labels, torch.zeros(labels.shape[0], device=images.device), indices, views=views,
                 **extra)


@dataclass
class PolicyContext:
    """What some policies need beyond their config: the training split in memory (to render a stored view),
    and the replay store with what keys its entries (the teacher's weights, the outputs the loss asks for)."""
    stored: object | None = None          # common.views.StoredImages
    store: object | None = None           # common.answer_store.AnswerStore: the run's --replay-store
    teacher_sha256: str | None = None     # the teacher whose answers are stored
    keys: tuple[str, ...] = ()            # the outputs stored with each view
    classes: int = 0                      # the teacher's classes (a top-k answer's dense length)


@dataclass(frozen=True)
class PolicyConfig:
    """What every policy is told: N images a step and the seed of its own draws (general flags)."""
    batch_size: int = setting(64)
    seed: int = setting(0)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")

    def for_rank(self, world_size: int) -> "PolicyConfig":
        """One rank's share of a global step under torchrun; a one-line ValueError where the figures do not
        split evenly over ``world_size`` processes."""
        return dataclasses.replace(self, **self.rank_share(world_size))

    def rank_share(self, world_size: int) -> dict:
        """The fields that differ on one rank of ``world_size``: here N/P images a step."""
        if self.batch_size % world_size:
            raise ValueError(f"--batch-size {self.batch_size} is the global batch, split evenly over the "
                             f"{world_size} processes torchrun started: give a multiple of {world_size}")
        return {"batch_size": self.batch_size // world_size}


@dataclass(frozen=True)
class SubsetConfig(PolicyConfig):
    """A policy that sends k of the N images to the teacher."""
    k: int = setting(48)

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.k <= self.batch_size:
            raise ValueError(f"--k must be between 1 and --batch-size {self.batch_size}, got {self.k}")

    def rank_share(self, world_size: int) -> dict:
        """N/P images, k/P of them for the teacher."""
        share = super().rank_share(world_size)
        if self.k % world_size:
            raise ValueError(f"--k {self.k} is the teacher's images per global batch, split evenly over the "
                             f"{world_size} processes torchrun started: give a multiple of {world_size}")
        return share | {"k": self.k // world_size}


class QueryPolicy:
    """Subclasses set ``name``/``about`` and implement ``select``; RNG state rides in checkpoints.

    ``config_type`` is the policy's frozen config (``PolicyConfig`` or a subclass): its
    defaults, flags and checks in one place; the policy is built from one.
    """
    name: ClassVar[str] = ""
    about: ClassVar[str] = ""
    config_type: ClassVar[type[PolicyConfig]] = PolicyConfig
    # Why the policy cannot be split over several processes (state kept per data-set index); "" if it can.
    per_image_state: ClassVar[str] = ""
    # True: the policy keeps answers in a replay store (``context.store``), which the run must name.
    needs_store: ClassVar[bool] = False
    # True: a step's choice reads the student's weights (UNIX's uncertainty pass), so choosing it ahead of
    # the steps before it (``--prefetch``) scores with older weights: the trainer does so only when asked.
    # False: choosing ahead changes no bit (``--prefetch auto`` does it). A policy that keeps answers per
    # image (cached, replay) is False too: steps in flight never span an epoch's end, and an epoch draws
    # each image once, so no image is in two steps in flight.
    reads_weights: ClassVar[bool] = True

    def __init__(self, config: PolicyConfig | None = None, dataset_size: int = 0,
                 context: PolicyContext | None = None):
        self.config = config if config is not None else self.config_type()
        if not isinstance(self.config, self.config_type):
            raise TypeError(f"--query {self.name} takes a {self.config_type.__name__}, "
                            f"not a {type(self.config).__name__}")
        self.rng = np.random.default_rng(self.config.seed)
        self.gen = torch.Generator().manual_seed(self.config.seed)

    def preflight(self, dataset_size: int, stored_only: bool) -> None:
        """A check of the policy's own before the first step (``stored_only``: no live teacher, only the
        answers in a store); a one-line ValueError where the run cannot go on."""

    @property
    def batch_size(self) -> int:
        """N: images a full batch holds."""
        return self.config.batch_size

    @property
    def k(self) -> int:
        """Images of a full batch the teacher is asked about: the config's k, else all N."""
        return getattr(self.config, "k", self.config.batch_size)

    def k_for(self, n: int) -> int:
        return scaled_for_batch(n, self.batch_size, self.k, 0.0)[0]

    @property
    def teacher_images_per_batch(self) -> int:
        """k of a full batch, as a label (the counters say what was really sent)."""
        return self.k

    def complete(self, query: Query, answer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The answers for every row of ``query`` from what the teacher sent back (here: all of them)."""
        return answer

    def check(self, query: Query, fresh: dict[str, torch.Tensor]) -> None:
        """The teacher's fresh answers for ``query.verify``'s rows, to check the stored ones against (a policy
        that marks rows to verify implements it)."""

    def report(self) -> dict | None:
        """What the policy found that the run's summary should hold (``--verify-store``'s check); None: nothing."""
        return None

    def loader_lookahead(self):
        """A picklable callable the loader processes run on each batch's drawn recipe rows (N x 13, the whole
        split's names) to say which rows to render instead; the policy's ``select`` then gets the rows it
        rendered as ``rendered``. None (most policies): the loader renders what it draws."""
        return None

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
