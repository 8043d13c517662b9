"""Registry storage and the small pieces every CIFAR zoo family shares.

Kept apart from ``__init__`` so family modules can import ``register`` without
a circular import through the package that imports them.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterable

import torch
from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator adding a ``factory(num_classes=, in_channels=)`` under ``name``.

    Refuses a second entry for one name so a copy-paste slip cannot silently
    shadow an existing model.
    """
    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model name {name!r} is registered twice")
        MODELS[name] = factory
        return factory
    return add


class Pipeline(nn.Sequential):
    """A zoo model as a named chain: stem -> stages -> pool -> classifier.

    Every CIFAR KD architecture is a plain chain at the top level, so the
    ordinary ``nn.Sequential`` forward does the work and each named part is a
    top-level module that a forward hook can watch.  ``features`` lists which
    parts are exposed as named features (``feature_layers``).
    """

    def __init__(self, parts: OrderedDict[str, nn.Module], features: Iterable[str]):
        super().__init__(parts)
        self.feature_layers: dict[str, str] = {name: name for name in features}


def pool_flatten() -> nn.Sequential:
    """Global average pool then flatten, as one module so hooks see the embedding.

    Adaptive pooling (not a fixed kernel) keeps 32x32 and 28x28 inputs working.
    """
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
            relu: bool = True) -> nn.Sequential:
    """Bias-free conv + BN (+ ReLU), the unit nearly every family is built from."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ChannelShuffle(nn.Module):
    """Interleave channels across ``groups`` so grouped convs exchange information."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """The CRD repositories' init: He-normal (fan-out) convs, BN to identity.

    ``linear_std`` reproduces the families (VGG, MobileNetV2) that also draw the
    classifier from N(0, std) with zero bias; otherwise Linear keeps its default.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
