"""Model registry: the CIFAR knowledge-distillation zoo plus torchvision and timm.

``build_model(arch, num_classes, in_channels, image_size)`` is the one way the rest
of the system creates networks (``image_size`` reaches only the families built for
one input size, timm's ViTs).  Every model returned takes ``(N, in_channels, H, W)``
and returns ``(N, num_classes)`` logits, and lists its named intermediate
features in ``feature_layers`` (see ``common.features``).

Importing this package registers everything: the families below add
themselves to ``MODELS`` when imported, every classification model in
``torchvision.models`` appears as ``torchvision.NAME``, and every name in
``timm.list_models()`` as ``timm.NAME``.
"""
from __future__ import annotations

import difflib
import inspect

from torch import nn

from ._base import MODELS, register
from . import (  # noqa: F401  (imported for their registrations)
    mobilenetv2, resnet_cifar, resnet_large, shufflenetv1, shufflenetv2, timm_models, torchvision_models,
    vgg, wrn,
)

ADAPTED = (torchvision_models.PREFIX, timm_models.PREFIX)
"""The prefixes of the families adapted from other libraries, in the order ``list_models`` gives them."""

__all__ = ["MODELS", "register", "list_models", "build_model"]


def list_models() -> list[str]:
    """All registered names: the CIFAR zoo first, then ``torchvision.*``, then ``timm.*``."""
    zoo = [n for n in MODELS if not n.startswith(ADAPTED)]
    return zoo + [n for prefix in ADAPTED for n in MODELS if n.startswith(prefix)]


def _unknown(arch: str) -> str:
    """One readable line naming the closest registered names (case-insensitive)."""
    by_lower = {n.lower(): n for n in MODELS}
    close = difflib.get_close_matches(arch.lower(), list(by_lower), n=3, cutoff=0.5)
    hint = ("did you mean " + ", ".join(repr(by_lower[c]) for c in close) + "?") if close \
        else "no similar name."
    return (f"unknown model {arch!r}: {hint} "
            f"List all names with common.models.list_models().")


def build_model(arch: str, num_classes: int, in_channels: int = 3,
                image_size: tuple[int, int] | None = None) -> nn.Module:
    """Instantiate the untrained model registered as ``arch``, for ``image_size`` (H, W) images if it needs to know."""
    factory = MODELS.get(arch)
    if factory is None:
        raise ValueError(_unknown(arch))
    sized = image_size is not None and "image_size" in inspect.signature(factory).parameters
    return factory(num_classes=num_classes, in_channels=in_channels,
                   **({"image_size": tuple(image_size)} if sized else {}))
