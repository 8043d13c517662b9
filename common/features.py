"""Named intermediate features taken with forward hooks.

One mechanism for every model, zoo or torchvision: a model lists
``feature_layers`` ({feature name: qualified module name}); the output of each
named module is captured while the model runs its ordinary ``forward``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn


def feature_names(model: nn.Module) -> list[str]:
    return list(getattr(model, "feature_layers", {}))


@contextmanager
def capture_features(model: nn.Module, names: Iterable[str]):
    """Yield a dict that fills with the named features during forward passes."""
    layers = getattr(model, "feature_layers", {})
    names = list(names)
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise KeyError(f"unknown feature(s) {unknown}; this model offers {list(layers)}")
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = []
    for name in names:
        def hook(_module, _inputs, output, name=name):
            captured[name] = output
        handles.append(modules[layers[name]].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def forward_with_features(model: nn.Module, x: torch.Tensor, names: Iterable[str] = ()):
    """Return ``(logits, {name: feature})`` for one forward pass."""
    names = list(names)
    if not names:
        return model(x), {}
    with capture_features(model, names) as feats:
        logits = model(x)
    return logits, dict(feats)
