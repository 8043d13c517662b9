"""Distillation losses, one file each, and the registry that builds them by name.

``--loss NAME`` picks one (``kd``, ``at``, ``crd``...); ``--loss kd+at`` sums
several (``Combined``), each with its own weight flag.  ``--feature-pairs``
names the student:teacher features a feature loss uses (``pairs.py``); without
it each loss takes its reference frameworks' layers.  Code outside this
package asks a loss what it needs (``teacher_outputs``, ``student_features``)
and never compares loss names.
"""
from __future__ import annotations

from .at import AT
from .base import DistillBatch, DistillLoss, ModelShapes, StepContext, TeacherOutput
from .combine import Combined
from .crd import CRD
from .dkd import DKD
from .fitnet import FitNet
from .kd import KD
from .none import NoDistill
from .pairs import (FeatureLoss, parse_pairs, resolve_pairs, student_feature_names,
                    teacher_feature_names)
from .pkt import PKT
from .rkd import RKD
from .sp import SP
from .vid import VID

LOSSES: dict[str, type[DistillLoss]] = {cls.name: cls for cls in (NoDistill, KD, DKD, AT, SP, FitNet, PKT, RKD, VID, CRD)}

__all__ = ["LOSSES", "build_loss", "loss_classes", "loss_needs_teacher", "parse_pairs", "resolve_pairs",
           "Combined", "DistillBatch", "DistillLoss", "FeatureLoss", "ModelShapes", "StepContext",
           "TeacherOutput"]


def loss_classes(name: str) -> list[type[DistillLoss]]:
    """``"kd+at"`` -> ``[KD, AT]``; a one-line ``ValueError`` for an unknown part."""
    parts = [p.strip() for p in name.split("+")]
    unknown = [p for p in parts if p not in LOSSES]
    if unknown or not all(parts):
        raise ValueError(f"unknown --loss {name!r}: choose from {', '.join(LOSSES)}, or join several "
                         f"with '+' (e.g. kd+at)")
    if len(set(parts)) != len(parts):
        raise ValueError(f"--loss {name!r} names a loss twice")
    return [LOSSES[p] for p in parts]


def loss_needs_teacher(name: str) -> bool:
    return any(cls.needs_teacher for cls in loss_classes(name))


def build_loss(name: str, shapes: ModelShapes, pairs=None, configs: dict | None = None) -> DistillLoss:
    """Build ``--loss name`` (one loss or ``a+b``) for the models' shapes.

    ``configs`` maps a part's name to its config (``{"kd": KDConfig(T=2)}``); a part
    without one takes its config's defaults. ``pairs`` is the ``--feature-pairs``
    text (or an already parsed list, or None for each loss's default); every feature
    loss in a combination uses the same pairs. ``shapes.student`` / ``shapes.teacher``
    list each model's named features with their full per-image shapes (plus ``logits``).
    """
    configs = configs or {}
    classes = loss_classes(name)
    if pairs and not any(issubclass(cls, FeatureLoss) for cls in classes):
        raise ValueError(f"--loss {name} uses the logits only and takes no --feature-pairs")
    s_names, t_names = student_feature_names(shapes), teacher_feature_names(shapes)
    losses = []
    for cls in classes:
        resolved = (resolve_pairs(cls, pairs, s_names, t_names, shapes.student, shapes.teacher)
                    if issubclass(cls, FeatureLoss) else [])
        losses.append(cls.build(configs.get(cls.name) or cls.config_type(), shapes, resolved))
    return losses[0] if len(losses) == 1 else Combined(losses)
