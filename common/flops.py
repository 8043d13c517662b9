"""FLOPs per image, measured with ``torch.utils.flop_counter`` rather than assumed.

The counter sees matmuls and convolutions (the usual FLOP convention of the KD
literature); elementwise ops are not counted. Backward is measured too: with the
input not requiring grad the first layer's input-gradient is skipped, so B is
neither F nor 2F exactly.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn) -> int:
    """FLOPs of whatever ``fn()`` runs (forward and backward alike)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def forward_flops_per_image(model: nn.Module, input_shape, batch: int = 2) -> float:
    """Forward FLOPs of one image (eval mode, no grad)."""
    device = next(model.parameters()).device
    x = torch.zeros(batch, *input_shape, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            flops = count_flops(lambda: model(x))
    finally:
        model.train(was_training)
    return flops / batch


def backward_flops_per_image(model: nn.Module, input_shape, batch: int = 2) -> float:
    """Backward FLOPs of one image, on a copy so the model's BN statistics stay put."""
    m = copy.deepcopy(model).train()
    device = next(m.parameters()).device
    x = torch.zeros(batch, *input_shape, device=device)
    out = m(x)
    loss = out.float().pow(2).mean()
    return count_flops(loss.backward) / batch
