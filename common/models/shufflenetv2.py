"""ShuffleNet V2 1.0x for CIFAR (ShuffleV2: widths 116/232/464, head 1024).

Architecture: Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design" (ECCV 2018), in the CIFAR form of the CRD benchmark (Tian
et al., ICLR 2020, github.com/HobbitLong/RepDistiller, after
kuangliu/pytorch-cifar): a 1x1 stem to 24 channels and no max-pool, then per
stage one down-sampling unit followed by 3/7/3 basic units (the paper's 4/8/4).
Rewritten here.  Like the reference it keeps PyTorch's default initialisation.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ._base import ChannelShuffle, Pipeline, conv_bn, pool_flatten, register


class BasicUnit(nn.Module):
    """Split channels in half; transform one half, keep the other; shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.body = nn.Sequential(conv_bn(half, half, 1),
                                  conv_bn(half, half, 3, groups=half, relu=False),
                                  conv_bn(half, half, 1))
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, work = x.chunk(2, dim=1)
        return self.shuffle(torch.cat([keep, self.body(work)], 1))


class DownUnit(nn.Module):
    """Two stride-2 branches over the whole input, concatenated and shuffled."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.left = nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, relu=False),
                                  conv_bn(cin, mid, 1))
        self.right = nn.Sequential(conv_bn(cin, mid, 1),
                                   conv_bn(mid, mid, 3, 2, groups=mid, relu=False),
                                   conv_bn(mid, mid, 1))
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(torch.cat([self.left(x), self.right(x)], 1))


class ShuffleNetV2(Pipeline):
    def __init__(self, num_classes: int = 100, in_channels: int = 3,
                 widths=(116, 232, 464), units=(3, 7, 3), head: int = 1024):
        parts = OrderedDict(stem=conv_bn(in_channels, 24, 1))
        cin = 24
        for i, (cout, n) in enumerate(zip(widths, units)):
            parts[f"stage{i + 1}"] = nn.Sequential(DownUnit(cin, cout),
                                                   *[BasicUnit(cout) for _ in range(n)])
            cin = cout
        parts.update(head=conv_bn(cin, head, 1), pool=pool_flatten(),
                     fc=nn.Linear(head, num_classes))
        super().__init__(parts, ["stem", "stage1", "stage2", "stage3", "pool"])


register("ShuffleV2")(ShuffleNetV2)
