"""Model registry: the CIFAR knowledge-distillation zoo plus torchvision.

``build_model(arch, num_classes, in_channels)`` is the one way the rest of the
system creates networks.  Every model returned takes ``(N, in_channels, H, W)``
and returns ``(N, num_classes)`` logits, and lists its named intermediate
features in ``feature_layers`` (see ``common.features``).

Importing this package registers everything: the families below add
themselves to ``MODELS`` when imported, and every classification model in
``torchvision.models`` appears as ``torchvision.NAME``.
"""
from __future__ import annotations

import difflib

from torch import nn

from ._base import MODELS, register
from . import (  # noqa: F401  (imported for their registrations)
    mobilenetv2, resnet_cifar, resnet_large, shufflenetv1, shufflenetv2, torchvision_models,
    vgg, wrn,
)

__all__ = ["MODELS", "register", "list_models", "build_model"]


def list_models() -> list[str]:
    """All registered names: the CIFAR zoo first, then ``torchvision.*``."""
    zoo = [n for n in MODELS if not n.startswith(torchvision_models.PREFIX)]
    return zoo + [n for n in MODELS if n.startswith(torchvision_models.PREFIX)]


def _unknown(arch: str) -> str:
    """One readable line naming the closest registered names (case-insensitive)."""
    by_lower = {n.lower(): n for n in MODELS}
    close = difflib.get_close_matches(arch.lower(), list(by_lower), n=3, cutoff=0.5)
    hint = ("did you mean " + ", ".join(repr(by_lower[c]) for c in close) + "?") if close \
        else "no similar name."
    return (f"unknown model {arch!r}: {hint} "
            f"List all names with common.models.list_models().")


def build_model(arch: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Instantiate the untrained model registered as ``arch``."""
    factory = MODELS.get(arch)
    if factory is None:
        raise ValueError(_unknown(arch))
    return factory(num_classes=num_classes, in_channels=in_channels)
