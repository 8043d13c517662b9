"""What a run distils with, as one typed value: which images the teacher sees (a query policy and its
config) and what is computed on its answers (a loss, or a sum of losses, with each part's config).

The CLI builds a ``Method`` from the flags (``--method``/``--query``/``--loss`` and each
part's own flags); the engine builds the policy and the loss from it and never reads a flag.
A library user builds one directly: ``Method("unix", UnixConfig(k=32), "kd", {"kd": KDConfig(T=2)})``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from common import reductions
from student_trainer.distill import DistillLoss, ModelShapes, build_loss, loss_classes, loss_needs_teacher
from student_trainer.query import POLICIES, PolicyConfig, PolicyContext, QueryPolicy

# --method NAME: a shorthand for a (--query, --loss) pair, kept from the first version of the CLI
SHORTHANDS: dict[str, tuple[str, str]] = {"ce": ("all", "none"), "kd": ("all", "kd"), "unix": ("unix", "kd")}


@dataclass(frozen=True)
class Method:
    query: str                                   # a name in POLICIES
    policy: PolicyConfig | None = None           # its config (None: the policy's defaults)
    loss: str = "kd"                             # a name in LOSSES, or several joined by "+"
    losses: dict[str, object] = field(default_factory=dict)  # a part's name -> its config (else defaults)
    feature_pairs: str | None = None             # student:teacher feature names (None: each loss's own)
    ce_weight: float | None = None               # cross-entropy weight (None: 0 with a teacher, 1 without)
    answer_topk: int = 0                         # the teacher's logits as top-K answers (0: dense)

    def __post_init__(self):
        if self.query not in POLICIES:
            raise ValueError(f"unknown --query {self.query!r}; choose one of {', '.join(sorted(POLICIES))}")
        kind = POLICIES[self.query].config_type
        if self.policy is None:
            object.__setattr__(self, "policy", kind())
        elif not isinstance(self.policy, kind):
            raise TypeError(f"--query {self.query} takes a {kind.__name__}, not a {type(self.policy).__name__}")
        parts = loss_classes(self.loss)  # a one-line error for an unknown part
        for name, config in self.losses.items():
            part = next((c for c in parts if c.name == name), None)
            if part is None or not isinstance(config, part.config_type):
                raise TypeError(f"--loss {self.loss}: {name!r} takes no {type(config).__name__}")
        if self.ce_weight == 0 and not self.needs_teacher:
            raise ValueError(f"--ce-weight 0 with --loss {self.loss} leaves nothing to train on")
        if not isinstance(self.answer_topk, int) or self.answer_topk < 0:
            raise ValueError(f"--answer-topk {self.answer_topk}: give K >= 1 classes a teacher answer keeps "
                             "(0: the dense logits)")

    @property
    def label(self) -> str:
        """The run's name for it: a shorthand where one fits (``kd``, ``unix``), else ``LOSS/QUERY``."""
        short = {pair: name for name, pair in SHORTHANDS.items()}
        return short.get((self.query, self.loss), f"{self.loss}/{self.query}")

    @property
    def policy_type(self) -> type[QueryPolicy]:
        return POLICIES[self.query]

    @property
    def needs_teacher(self) -> bool:
        return loss_needs_teacher(self.loss)

    def parts(self) -> list[type]:
        """The policy's class and each loss's class: what says how the run may be split or stored."""
        return [*loss_classes(self.loss), self.policy_type]

    def for_rank(self, world_size: int) -> "Method":
        """One rank's share of each global step: the policy scales its own config (N/P images, k/P, ...)."""
        return self if world_size == 1 else dataclasses.replace(self, policy=self.policy.for_rank(world_size))

    def build_policy(self, dataset_size: int = 0, context: PolicyContext | None = None) -> QueryPolicy:
        return self.policy_type(self.policy, dataset_size, context)

    def build_loss(self, shapes: ModelShapes) -> DistillLoss:
        return build_loss(self.loss, shapes, self.feature_pairs, self.losses)

    def answer_keys(self, loss: DistillLoss, num_classes: int) -> dict[str, str]:
        """Each key the loss reads -> the key asked of the teacher for it: ``logits`` becomes ``logits.topK``
        with ``answer_topk`` (the teacher answers its K largest logits and the rest, rebuilt to C values);
        features stay dense. ValueError (one line) where top-k cannot apply."""
        keys = [o.key for o in loss.teacher_outputs()]
        if not self.answer_topk:
            return {key: key for key in keys}
        if reductions.LOGITS not in keys:
            raise ValueError(f"--answer-topk applies to the teacher's logits, and --loss {self.loss} asks it for "
                             "features only (feature losses keep dense features)")
        if self.answer_topk > num_classes:
            raise ValueError(f"--answer-topk {self.answer_topk} is more than the teacher's {num_classes} classes")
        top = reductions.make_key(reductions.LOGITS, f"top{self.answer_topk}")
        return {key: top if key == reductions.LOGITS else key for key in keys}

    def ce_weight_for(self, loss: DistillLoss) -> float:
        """``ce_weight``, or its default: 0 where the loss asks the teacher for something, else 1."""
        if self.ce_weight is not None:
            return self.ce_weight
        return 0.0 if loss.teacher_outputs() else 1.0
