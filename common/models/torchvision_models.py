"""Any torchvision classification model, registered as ``torchvision.NAME``.

The architectures are torchvision's own (``torchvision.models``), built untrained
with ``get_model(name, weights=None, num_classes=...)``.  This module only adapts
them to the zoo contract: a first conv for ``in_channels`` other than 3, a
plain-tensor forward, and generic ``feature_layers``.  They assume ImageNet-size
inputs; a few (ViT, Swin, MaxViT, Inception-v3) require a minimum or exact size.
"""
from __future__ import annotations

from functools import partial

import torchvision
from torch import nn

from ._base import register

PREFIX = "torchvision."

# Auxiliary heads make forward return a namedtuple in train mode; the zoo
# contract wants plain logits.  init_weights=True silences a FutureWarning.
_EXTRA_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first ``nn.Conv2d`` for an identical one reading ``in_channels``.

    The new conv is freshly He-initialised (fan-out), the scheme torchvision
    uses for the stems of its CNNs.
    """
    for name, old in model.named_modules():
        if isinstance(old, nn.Conv2d):
            new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride,
                            old.padding, old.dilation, old.groups, old.bias is not None,
                            old.padding_mode)
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            if new.bias is not None:
                nn.init.zeros_(new.bias)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, new)
            return
    raise ValueError(f"{type(model).__name__} has no Conv2d to adapt to {in_channels} channels")


def top_level_features(model: nn.Module) -> dict[str, str]:
    """Every top-level child except the last (the classifier: fc/classifier/head(s)).

    Coarse but uniform: for ResNets conv1, relu, maxpool, layer1 ... layer4,
    avgpool; for VGG / MobileNets / EfficientNets ``features`` and ``avgpool``.
    Two kinds of child are left out because a hook on them would lie:
    containers (ModuleList/ModuleDict, e.g. MaxViT's ``blocks``) are never
    called, so their hook never fires; and a child followed by an in-place
    module (ResNet's ``bn1`` before ``relu(inplace=True)``) would report the
    value after that module overwrote it.
    """
    children = list(model.named_children())
    keep = []
    for (name, module), (_, following) in zip(children[:-1], children[1:]):
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)) or getattr(following, "inplace", False):
            continue
        keep.append(name)
    return {name: name for name in keep}


def build_torchvision(name: str, num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                         **_EXTRA_KWARGS.get(name, {}))
    if in_channels != 3:
        replace_first_conv(model, in_channels)
    model.feature_layers = top_level_features(model)
    return model


for _name in torchvision.models.list_models(module=torchvision.models):
    register(PREFIX + _name)(partial(build_torchvision, _name))
