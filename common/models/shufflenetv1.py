"""ShuffleNet V1 for CIFAR (ShuffleV1: groups 3, widths 240/480/960, 4/8/4 units).

Architecture: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional
Neural Network for Mobile Devices" (CVPR 2018), in the CIFAR form of the CRD
benchmark (Tian et al., ICLR 2020, github.com/HobbitLong/RepDistiller, which
follows kuangliu/pytorch-cifar): a 1x1 stem to 24 channels, no max-pool.
Rewritten here.  Like the reference it keeps PyTorch's default initialisation.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from ._base import ChannelShuffle, Pipeline, conv_bn, pool_flatten, register


class ShuffleUnit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1.

    Stride 2 concatenates an average-pooled copy of the input (so the unit only
    produces ``cout - cin`` new channels); stride 1 adds the input.  The very
    first unit sees only the 24 stem channels and so does not group its first
    1x1 conv, as in the paper.
    """

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first: bool = False):
        super().__init__()
        new = cout - cin if stride == 2 else cout
        mid = new // 4
        g1 = 1 if first else groups
        self.body = nn.Sequential(conv_bn(cin, mid, 1, groups=g1), ChannelShuffle(g1),
                                  conv_bn(mid, mid, 3, stride, groups=mid),
                                  conv_bn(mid, new, 1, groups=groups, relu=False))
        self.concat = stride == 2
        self.shortcut = nn.AvgPool2d(3, 2, 1) if self.concat else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, res = self.body(x), self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.concat else out + res)


class ShuffleNetV1(Pipeline):
    def __init__(self, num_classes: int = 100, in_channels: int = 3,
                 widths=(240, 480, 960), units=(4, 8, 4), groups: int = 3):
        parts = OrderedDict(stem=conv_bn(in_channels, 24, 1))
        cin = 24
        for i, (cout, n) in enumerate(zip(widths, units)):
            parts[f"stage{i + 1}"] = nn.Sequential(*[
                ShuffleUnit(cin if j == 0 else cout, cout, 2 if j == 0 else 1, groups,
                            first=(i == 0 and j == 0))
                for j in range(n)])
            cin = cout
        parts.update(pool=pool_flatten(), fc=nn.Linear(cin, num_classes))
        super().__init__(parts, ["stem", "stage1", "stage2", "stage3", "pool"])


register("ShuffleV1")(ShuffleNetV1)
