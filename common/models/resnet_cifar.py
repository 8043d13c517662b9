"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4).

Architecture: He et al., "Deep Residual Learning for Image Recognition"
(CVPR 2016), section 4.2 (the 6n+2 CIFAR networks), with the depths and the
4x-wide variants used as KD teachers/students in CRD (Tian et al., ICLR 2020,
github.com/HobbitLong/RepDistiller) and mdistiller.  Rewritten here; the
parameter names do not follow those repositories' checkpoints.

Layout: a 3x3 stem, three stages of basic blocks (the 2nd and 3rd stride 2),
global pooling, a linear classifier.  The "x4" networks widen the stem to 32
and the three stages to 64/128/256 channels.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from ._base import Pipeline, conv_bn, init_weights, pool_flatten, register


def projection(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity when shapes agree, else the 1x1 conv + BN shortcut (option B)."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return conv_bn(cin, cout, kernel=1, stride=stride, relu=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut, ReLU after the sum."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, planes, 3, stride),
                                  conv_bn(planes, planes, 3, relu=False))
        self.shortcut = projection(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def make_stage(block: type[nn.Module], cin: int, planes: int, blocks: int,
               stride: int) -> nn.Sequential:
    """``blocks`` residual blocks; only the first changes stride / width."""
    layers = [block(cin, planes, stride)]
    layers += [block(planes * block.expansion, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetCifar(Pipeline):
    """6n+2-layer ResNet; ``widths`` = (stem, stage1, stage2, stage3) channels."""

    def __init__(self, depth: int, widths=(16, 16, 32, 64), num_classes: int = 100,
                 in_channels: int = 3):
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        stem, w1, w2, w3 = widths
        parts = OrderedDict(
            stem=conv_bn(in_channels, stem),
            stage1=make_stage(BasicBlock, stem, w1, n, 1),
            stage2=make_stage(BasicBlock, w1, w2, n, 2),
            stage3=make_stage(BasicBlock, w2, w3, n, 2),
            pool=pool_flatten(),
            fc=nn.Linear(w3, num_classes),
        )
        super().__init__(parts, ["stem", "stage1", "stage2", "stage3", "pool"])
        init_weights(self)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register(f"resnet{_depth}")(partial(ResNetCifar, _depth, (16, 16, 32, 64)))
for _depth in (8, 32):
    register(f"resnet{_depth}x4")(partial(ResNetCifar, _depth, (32, 64, 128, 256)))
