"""The contract of a distillation loss: what it asks of the teacher, and the loss it computes.

Which images the teacher sees (a query policy: all N, UNIX's uncertain mixed k,
a random k) and what is computed on the answers (a distillation loss: KD, AT,
FitNet, ...) are independent choices; this module is the loss side. A loss is
an ``nn.Module`` (as mdistiller's distillers are): the modules it owns
(regressors, embeddings, memory banks) are trained by the trainer's optimiser,
saved and resumed with the run, and counted in its FLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from common import reductions
from common.reductions import NONE, make_key
from student_trainer.config import NoConfig

@dataclass(frozen=True)
class TeacherOutput:
    """One tensor asked of the teacher: ``logits`` or a feature, reduced on the server.

    ``key`` is how the wire, the server and the loss name it: ``stage3`` for the
    full map, ``stage3.attention`` for the map reduced by ``attention``.
    """
    name: str
    reduction: str = NONE

    @property
    def key(self) -> str:
        return make_key(self.name, self.reduction)


LOGITS = TeacherOutput(reductions.LOGITS)


@dataclass(frozen=True)
class StepContext:
    """Where training stands when a step's loss is computed (DKD's warm-up needs the epoch)."""
    epoch: int = 1          # 1-based, the epoch in progress
    epochs: int = 1         # epochs in the whole run
    step: int = 0           # global step, 0-based
    total_steps: int = 1    # steps in the whole run


@dataclass
class DistillBatch:
    """Everything a loss may use for the images the teacher answered about.

    An image's label is ``(1 - mix) * labels_a + mix * labels_b`` (mixed images;
    ``mix`` is 0 for unmixed ones, and then ``labels_b == labels_a``).
    ``indices`` are the data-set indices of each image's main part, the part
    weighted ``1 - mix`` (>= 0.5 for UNIX's mixing).
    """
    student_logits: torch.Tensor                 # k x classes, with grad
    teacher: dict[str, torch.Tensor]             # TeacherOutput.key -> k x ..., float32, no grad
    student_features: dict[str, torch.Tensor]    # student feature name -> k x ..., with grad
    labels_a: torch.Tensor
    labels_b: torch.Tensor
    mix: torch.Tensor
    indices: torch.Tensor
    context: StepContext = field(default_factory=StepContext)


@dataclass(frozen=True)
class ModelShapes:
    """Per-image shapes (no batch dimension) a loss needs to build its own modules."""
    student: dict[str, tuple[int, ...]]   # student feature name (and 'logits') -> shape
    # every key the teacher offers (common.reductions.offered_keys): each full output under its
    # plain name (``stage3``), and each reduction of it (``stage3.attention``) with its shape as sent
    teacher: dict[str, tuple[int, ...]]
    num_classes: int
    dataset_size: int


class DistillLoss(nn.Module):
    """One KD method's loss. Subclasses set ``name`` and ``about`` and implement the rest.

    ``forward`` returns named, already weighted terms (``{"loss_at": ...}``); the
    trainer adds them to the cross-entropy term and logs each one.
    """
    name: ClassVar[str] = ""
    about: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True   # False: the loss asks the teacher nothing (no --teacher-url)
    # Why the loss cannot be split over several processes (state kept per data-set index); "" if it can.
    per_image_state: ClassVar[str] = ""

    # The loss's hyperparameters: a frozen dataclass whose fields name their flags (``--NAME-...``) and
    # whose ``__post_init__`` refuses bad values: the one place to add a hyperparameter.
    config_type: ClassVar[type] = NoConfig

    @classmethod
    def build(cls, config, shapes: ModelShapes, pairs: list[tuple[str, str]]) -> "DistillLoss":
        """Build from the loss's config, the models' shapes and the resolved feature pairs."""
        return cls()

    def teacher_outputs(self) -> list[TeacherOutput]:
        return [LOGITS]

    def student_features(self) -> list[str]:
        return []

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        raise NotImplementedError
