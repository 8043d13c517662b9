"""The servers' one rule on pixel values: every value finite (``--allow-nonfinite`` lifts it).

A NaN or infinite pixel makes NaN outputs that a student would train on
unawares, so both backends refuse such images before they reach the model.
"""
from __future__ import annotations

import torch


def require_finite(images: torch.Tensor) -> None:
    """ValueError if ``images`` hold a NaN or an infinity (integer images cannot)."""
    if images.is_floating_point() and not torch.isfinite(images).all():
        raise ValueError("images hold NaN or infinite values (all values must be finite)")
