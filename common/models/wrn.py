"""Wide ResNets wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Architecture: Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016):
pre-activation (BN-ReLU-conv) basic blocks, depth 6n+4, stage widths
16k/32k/64k; the four sizes are those of the CRD benchmark (Tian et al., ICLR
2020, github.com/HobbitLong/RepDistiller).  Rewritten here, no dropout (the
benchmark trains with dropRate 0).

Features follow CRD: ``stage3`` is the raw (pre-BN) output of the last block;
the final BN-ReLU sits in ``head`` just before pooling.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn

from ._base import Pipeline, init_weights, pool_flatten, register


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice.  When the shape changes, the 1x1 shortcut reads the
    pre-activated input (as in the WRN code) rather than the raw input."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.preact = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU())
        self.body = nn.Sequential(_conv3x3(cin, cout, stride), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True), _conv3x3(cout, cout))
        self.project = None if stride == 1 and cin == cout else \
            nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.preact(x)
        if self.project is None:
            return x + self.body(a)
        return self.project(a) + self.body(a)


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*[PreActBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                           for i in range(blocks)])


class WideResNet(Pipeline):
    """WRN-depth-k for small images."""

    def __init__(self, depth: int, widen: int, num_classes: int = 100, in_channels: int = 3):
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        w1, w2, w3 = 16 * widen, 32 * widen, 64 * widen
        parts = OrderedDict(
            stem=_conv3x3(in_channels, 16),
            stage1=_stage(16, w1, n, 1),
            stage2=_stage(w1, w2, n, 2),
            stage3=_stage(w2, w3, n, 2),
            head=nn.Sequential(nn.BatchNorm2d(w3), nn.ReLU(inplace=True)),
            pool=pool_flatten(),
            fc=nn.Linear(w3, num_classes),
        )
        super().__init__(parts, ["stem", "stage1", "stage2", "stage3", "pool"])
        init_weights(self)
        nn.init.zeros_(self.fc.bias)  # the WRN code zeroes only the classifier bias


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    register(f"wrn_{_depth}_{_widen}")(partial(WideResNet, _depth, _widen))
