"""VGG-BN for CIFAR: vgg8, vgg11, vgg13, vgg16, vgg19.

Architecture: Simonyan & Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition" (ICLR 2015), configurations A/B/D/E plus the
shallow "S" (vgg8), in the CIFAR form of the CRD benchmark (Tian et al., ICLR
2020, github.com/HobbitLong/RepDistiller): conv-BN-ReLU blocks, the big fully
connected layers replaced by global pooling and one 512->classes linear layer.
Rewritten here.

Like CRD on 32x32 inputs, blocks 0-3 are each followed by a 2x2 max-pool except
block 3 (CRD pools there only for 64x64 inputs), so block 4 runs at 4x4.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial

from torch import nn

from ._base import Pipeline, init_weights, pool_flatten, register

# Conv widths of the five blocks.
CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _block(cin: int, widths: list[int]) -> nn.Sequential:
    """3x3 conv (with bias, as in the reference) + BN + ReLU per width."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    return nn.Sequential(*layers)


class VGG(Pipeline):
    """Five conv blocks; features ``stem`` (block 0) and ``stage1``..``stage4``."""

    def __init__(self, config: list[list[int]], num_classes: int = 100, in_channels: int = 3):
        cins = [in_channels] + [widths[-1] for widths in config[:-1]]
        blocks = [_block(cin, widths) for cin, widths in zip(cins, config)]
        names = ["stem", "stage1", "stage2", "stage3", "stage4"]
        parts = OrderedDict()
        for i, (name, block) in enumerate(zip(names, blocks)):
            parts[name] = block
            if i < 3:
                parts[f"down{i + 1}"] = nn.MaxPool2d(2, 2)
        parts["pool"] = pool_flatten()
        parts["fc"] = nn.Linear(config[-1][-1], num_classes)
        super().__init__(parts, names + ["pool"])
        init_weights(self, linear_std=0.01)


for _name, _config in CONFIGS.items():
    register(_name)(partial(VGG, _config))
