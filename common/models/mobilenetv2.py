"""MobileNetV2 for CIFAR, width 0.5 (CRD's ``mobile_half``, registered as MobileNetV2).

Architecture: Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks" (CVPR 2018), in the small-image form used by CRD (Tian et al.,
ICLR 2020, github.com/HobbitLong/RepDistiller; originally from "Knowledge
Distillation via Route Constrained Optimization"): stride-2 3x3 stem, the
seven inverted-residual groups of the paper, a 1x1 conv to 1280 channels,
global pooling, linear classifier.  Rewritten here.

As in CRD every inverted residual keeps its 1x1 expansion conv, even with
expansion 1, and the seven groups are exposed as four stages the way CRD
taps them: groups 0-1, 2, 3-4 and 5-6.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ._base import Pipeline, conv_bn, init_weights, pool_flatten, register

# (expansion, channels, repeats, first stride); expansion None = the model's ``expand``.
SETTINGS = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1)]
STAGES = {"stage1": (0, 1), "stage2": (2,), "stage3": (3, 4), "stage4": (5, 6)}


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> linear 1x1 project; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(conv_bn(cin, hidden, 1),
                                  conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                  conv_bn(hidden, cout, 1, relu=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(Pipeline):
    def __init__(self, num_classes: int = 100, in_channels: int = 3, width: float = 0.5,
                 expand: int = 6):
        cin = int(32 * width)
        groups = []
        for t, c, n, s in SETTINGS:
            cout = int(c * width)
            groups.append(nn.Sequential(*[InvertedResidual(cin if i == 0 else cout, cout,
                                                           s if i == 0 else 1, t or expand)
                                          for i in range(n)]))
            cin = cout
        last = int(1280 * width) if width > 1.0 else 1280
        parts = OrderedDict(stem=conv_bn(in_channels, int(32 * width), 3, 2))
        for name, idx in STAGES.items():
            parts[name] = nn.Sequential(*[groups[i] for i in idx])
        parts.update(head=conv_bn(cin, last, 1), pool=pool_flatten(),
                     fc=nn.Linear(last, num_classes))
        super().__init__(parts, ["stem", *STAGES, "pool"])
        init_weights(self, linear_std=0.01)


register("MobileNetV2")(MobileNetV2)
