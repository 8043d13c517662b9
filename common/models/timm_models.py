"""Any timm model, registered as ``timm.NAME``: the ImageNet-era networks users bring as teachers.

Built untrained with ``timm.create_model(name, pretrained=False, ...)``, so nothing is
ever downloaded; weights come from a checkpoint (``common.foreign_checkpoints`` reads
timm's ``.pth.tar`` and the hub's ``model.safetensors``). timm adapts ``num_classes``
and ``in_chans`` itself. A model whose pretrained config says ``fixed_input_size``
(ViT, DeiT, Swin ...) is built for the images it will see (``image_size``), so its
position embeddings fit them.

Features come from timm's own metadata, not from guessing at modules: entry i of
``feature_info`` is ``stage{i}`` (the numbering of timm's ``out_indices``), taken as
``forward_intermediates`` returns it (N x C x H x W for every family, a ViT's tokens
included), and ``pool`` is the embedding the classifier reads (its input, where the
classifier is one ``nn.Linear``). The forward becomes ``forward_intermediates`` then timm's own ``forward_head``, each
intermediate passing through a parameter-free tap that the hooks of
``common.features`` watch, so the state dict stays timm's, key for key.
"""
from __future__ import annotations

from functools import partial
from types import MethodType

import timm
import torch
from torch import nn

from ._base import register

PREFIX = "timm."
POOL = "pool"


class _InputTap(nn.Identity):
    """Shows the input of the module it is hooked to (the classifier) to the feature hooks watching it."""

    def show(self, _module: nn.Module, inputs: tuple) -> None:
        self(inputs[0])


def _forward_through_taps(self, x: torch.Tensor) -> torch.Tensor:
    """timm's forward, with every intermediate shown to its tap on the way."""
    final, intermediates = self.forward_intermediates(x)
    for tap, feature in zip(self.stage_taps, intermediates, strict=True):
        tap(feature)
    return self.forward_head(final)


def _creation_options(name: str, image_size: tuple[int, int] | None) -> dict:
    """``img_size`` for the models built for one input size, nothing for the others (a CNN refuses it)."""
    if image_size is None or not timm.models.get_pretrained_cfg(name).fixed_input_size:
        return {}
    height, width = image_size
    return {"img_size": height if height == width else (height, width)}


def build_timm(name: str, num_classes: int = 1000, in_channels: int = 3,
               image_size: tuple[int, int] | None = None) -> nn.Module:
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels,
                              **_creation_options(name, image_size))
    model.stage_taps = nn.ModuleList(nn.Identity() for _ in model.feature_info)
    model.feature_layers = {f"stage{i}": f"stage_taps.{i}" for i in range(len(model.stage_taps))}
    classifier = model.get_classifier()
    if isinstance(classifier, nn.Linear):  # not a whole head, nor DeiT-distilled's (head, head_dist)
        model.pool_tap = _InputTap()
        classifier.register_forward_pre_hook(model.pool_tap.show)  # (a bound method: a deep copy rebinds it)
        model.feature_layers[POOL] = "pool_tap"
    model.forward = MethodType(_forward_through_taps, model)
    return model


for _name in timm.list_models():
    register(PREFIX + _name)(partial(build_timm, _name))
