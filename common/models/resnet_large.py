"""ResNet50 of the CIFAR KD literature.

Architecture: the bottleneck ResNet-50 of He et al., "Deep Residual Learning
for Image Recognition" (CVPR 2016) - stages of 3/4/6/3 bottlenecks at
64/128/256/512 (x4) channels - in the small-image form used as a teacher by
CRD (Tian et al., ICLR 2020, github.com/HobbitLong/RepDistiller,
``resnetv2.py``): a stride-1 3x3 stem and no max-pool, so 32x32 inputs reach
the last stage at 4x4.  Rewritten here.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from ._base import Pipeline, conv_bn, init_weights, pool_flatten, register
from .resnet_cifar import make_stage, projection


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand x4, plus shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(conv_bn(cin, planes, 1), conv_bn(planes, planes, 3, stride),
                                  conv_bn(planes, cout, 1, relu=False))
        self.shortcut = projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNetLarge(Pipeline):
    def __init__(self, blocks=(3, 4, 6, 3), num_classes: int = 100, in_channels: int = 3):
        parts = OrderedDict(stem=conv_bn(in_channels, 64))
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            parts[f"stage{i + 1}"] = make_stage(Bottleneck, cin, planes, n, 1 if i == 0 else 2)
            cin = planes * Bottleneck.expansion
        parts.update(pool=pool_flatten(), fc=nn.Linear(cin, num_classes))
        super().__init__(parts, ["stem", "stage1", "stage2", "stage3", "stage4", "pool"])
        init_weights(self)


@register("ResNet50")
def resnet50(num_classes: int = 100, in_channels: int = 3) -> ResNetLarge:
    return ResNetLarge((3, 4, 6, 3), num_classes, in_channels)
