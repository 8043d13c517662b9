"""Feature pairs: which student feature is distilled towards which teacher feature.

Pairs are named, never positional: ``--feature-pairs stage2:stage2,stage3:stage3``
(student:teacher; a bare ``stage3`` means ``stage3:stage3``).  Without the flag
each loss picks its reference frameworks' layers by name (``default_pairs``):

* AT, VID: every ``stageN`` both models have (RepDistiller ``feat[1:-1]``);
* FitNet: the middle shared stage, ``stage2`` for the zoo (mdistiller/RepDistiller
  ``hint_layer=2``);
* SP: each model's last stage (RepDistiller ``feat[-2]``, mdistiller ``feats[-1]``);
* PKT, RKD, CRD: ``pool:pool``, the embedding before fc (``feat[-1]``).

Shapes here are per image, without the batch dimension; teacher shapes are the
full (unreduced) shapes of the teacher's named features.
"""
from __future__ import annotations

import re
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from common import reductions

from .base import DistillLoss, ModelShapes, TeacherOutput

Pair = tuple[str, str]
_STAGE = re.compile(r"stage(\d+)$")


class FeatureLoss(DistillLoss):
    """A loss on named feature pairs; ``pairs`` are resolved before it is built."""

    max_pairs: ClassVar[int | None] = None   # CRD: one memory bank, one pair

    def __init__(self, pairs: Sequence[Pair]):
        super().__init__()
        self.pairs: list[Pair] = [tuple(p) for p in pairs]

    @classmethod
    def default_pairs(cls, student_names: Sequence[str], teacher_names: Sequence[str]) -> list[Pair]:
        """The pairs the reference frameworks distil when no ``--feature-pairs`` is given."""
        raise NotImplementedError

    @classmethod
    def pair_problem(cls, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> str | None:
        """Why this loss cannot use a pair of these per-image shapes (None: it can)."""
        return None

    # what the server does to each paired teacher feature before sending it (AT: attention)
    teacher_reduction: ClassVar[str] = reductions.NONE

    def teacher_outputs(self) -> list[TeacherOutput]:
        return list(dict.fromkeys(TeacherOutput(t, self.teacher_reduction) for _, t in self.pairs))

    def student_features(self) -> list[str]:
        return list(dict.fromkeys(s for s, _ in self.pairs))


class EmbeddingLoss(FeatureLoss):
    """A loss on the embedding before the classifier (``pool``): PKT, RKD, CRD."""

    @classmethod
    def default_pairs(cls, student_names, teacher_names):
        return [("pool", "pool")] if "pool" in student_names and "pool" in teacher_names else []


# ---------------------------------------------------------------- parsing and defaults

def parse_pairs(text: str) -> list[Pair]:
    """``"stage2:stage2,stage3:stage4"`` -> ``[("stage2", "stage2"), ("stage3", "stage4")]``."""
    pairs: list[Pair] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        parts = [p.strip() for p in item.split(":")]
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"--feature-pairs: cannot read {item!r}; write STUDENT:TEACHER pairs separated "
                             f"by commas, e.g. stage2:stage2,stage3:stage3")
        pairs.append((parts[0], parts[1]))
    if not pairs:
        raise ValueError(f"--feature-pairs {text!r} names no pair; write e.g. stage2:stage2,stage3:stage3")
    return pairs


def stage_names(names: Sequence[str]) -> list[str]:
    """The ``stageN`` names among ``names``, in stage order."""
    stages = [n for n in names if _STAGE.match(n)]
    return sorted(stages, key=lambda n: int(_STAGE.match(n).group(1)))


def shared_stages(student_names: Sequence[str], teacher_names: Sequence[str]) -> list[str]:
    return [n for n in stage_names(student_names) if n in set(teacher_names)]


def _offers(names: Sequence[str], shapes: dict[str, tuple[int, ...]]) -> str:
    def one(n):
        shape = shapes.get(n)
        return f"{n} {'x'.join(map(str, shape))}" if shape is not None else n
    return ", ".join(one(n) for n in names) or "nothing"


def resolve_pairs(loss_cls: type[DistillLoss], text_or_none, student_names: Sequence[str],
                  teacher_names: Sequence[str], student_shapes: dict[str, tuple[int, ...]],
                  teacher_shapes: dict[str, tuple[int, ...]]) -> list[Pair]:
    """The checked feature pairs for ``loss_cls``: parsed from the flag, or the loss's default.

    ``text_or_none`` may also be an already parsed list of pairs.  Raises a one-line
    ``ValueError`` naming what both models offer when a name is unknown or the
    loss cannot use the shapes.
    """
    student_names = [n for n in student_names if n != reductions.LOGITS and reductions.SEPARATOR not in n]
    teacher_names = [n for n in teacher_names if n != reductions.LOGITS and reductions.SEPARATOR not in n]

    def fail(problem: str) -> ValueError:
        return ValueError(f"--loss {loss_cls.name}: {problem}; student offers "
                          f"{_offers(student_names, student_shapes)}; teacher offers "
                          f"{_offers(teacher_names, teacher_shapes)}")

    if not (isinstance(loss_cls, type) and issubclass(loss_cls, FeatureLoss)):
        if text_or_none:
            raise ValueError(f"--loss {loss_cls.name} uses the logits only and takes no --feature-pairs")
        return []
    if text_or_none is None or text_or_none == "":
        pairs = loss_cls.default_pairs(student_names, teacher_names)
        if not pairs:
            raise fail("the models share no feature this loss pairs by default; name pairs with "
                       "--feature-pairs STUDENT:TEACHER,...")
    elif isinstance(text_or_none, str):
        pairs = parse_pairs(text_or_none)
    else:
        pairs = [tuple(p) for p in text_or_none]
    if len(set(pairs)) != len(pairs):
        raise fail(f"a pair is named twice in {','.join(f'{s}:{t}' for s, t in pairs)}")
    if loss_cls.max_pairs is not None and len(pairs) > loss_cls.max_pairs:
        raise fail(f"takes at most {loss_cls.max_pairs} feature pair(s), got "
                   f"{','.join(f'{s}:{t}' for s, t in pairs)}")
    for s, t in pairs:
        if s not in student_names or s not in student_shapes:
            raise fail(f"unknown student feature {s!r} in pair {s}:{t}")
        if t not in teacher_names or t not in teacher_shapes:
            raise fail(f"unknown teacher feature {t!r} in pair {s}:{t}")
        problem = loss_cls.pair_problem(tuple(student_shapes[s]), tuple(teacher_shapes[t]))
        if problem:
            raise fail(f"cannot pair student {s} ({'x'.join(map(str, student_shapes[s]))}) with teacher "
                       f"{t} ({'x'.join(map(str, teacher_shapes[t]))}): {problem}")
    return pairs


def teacher_feature_names(shapes: ModelShapes) -> list[str]:
    """The teacher's named features in ``shapes.teacher``: its full outputs, not reduced keys
    such as ``stage3.attention`` (which ``common.reductions.offered_keys`` also lists)."""
    return [k for k in shapes.teacher if k != reductions.LOGITS and reductions.SEPARATOR not in k]


def student_feature_names(shapes: ModelShapes) -> list[str]:
    return [k for k in shapes.student if k != reductions.LOGITS]


# ---------------------------------------------------------------- spatial matching

def spatial_problem(s_hw: Sequence[int], t_hw: Sequence[int]) -> str | None:
    """Maps are matched by pooling the larger one; refuse when neither is larger in both axes."""
    (sh, sw), (th, tw) = s_hw, t_hw
    if (sh - th) * (sw - tw) < 0:
        return (f"the student map ({sh}x{sw}) is larger along one axis and the teacher's ({th}x{tw}) "
                f"along the other, so neither can be pooled to the other")
    return None


def pool_to_common(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger of two ``N x C x H x W`` maps to the smaller's H x W.

    RepDistiller's AT and VID do the same (``F.adaptive_avg_pool2d`` to the smaller size).
    """
    (ah, aw), (bh, bw) = a.shape[-2:], b.shape[-2:]
    if (ah, aw) == (bh, bw):
        return a, b
    if ah >= bh and aw >= bw:
        return F.adaptive_avg_pool2d(a, (bh, bw)), b
    if ah <= bh and aw <= bw:
        return a, F.adaptive_avg_pool2d(b, (ah, aw))
    raise ValueError(spatial_problem((ah, aw), (bh, bw)))


# ---------------------------------------------------------------- reductions

def reduce_feature(reduction: str, x: torch.Tensor) -> torch.Tensor:
    """Apply the server's reduction ``reduction`` to a student feature, so both sides match.

    The very function the teacher server applies (``common.reductions.reduce``);
    ``none`` returns ``x``.
    """
    return reductions.reduce(reduction, x)
