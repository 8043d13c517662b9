"""Several requests through one forward: their images joined in order, each answer its own rows.

The gRPC batcher and the Triton callable both run a batch of requests as one
``TeacherModel.forward``; this is the part they share. ``gather`` joins the
requests' images and the keys they ask for, ``split`` hands each request the
rows of its own images for its own keys.
"""
from __future__ import annotations

from typing import Sequence

import torch


def gather(parts: Sequence[torch.Tensor], keys: Sequence[Sequence[str]]) -> tuple[torch.Tensor, list[str]]:
    """The requests' images as one batch, in order, and the union of their keys (first asked, first)."""
    if len({p.dtype for p in parts}) > 1:
        # Mixed wire dtypes: float32 holds float16, bfloat16 and raw uint8 values exactly.
        parts = [p.float() for p in parts]
    images = torch.cat(list(parts)) if len(parts) > 1 else parts[0]
    return images, list(dict.fromkeys(k for wanted in keys for k in wanted))


def split(result: dict[str, torch.Tensor], sizes: Sequence[int],
          keys: Sequence[Sequence[str]]) -> list[dict[str, torch.Tensor]]:
    """Each request's own rows (``sizes``: its images, in gathered order) of its own keys, as views."""
    answers, row = [], 0
    for n, wanted in zip(sizes, keys):
        answers.append({k: result[k][row:row + n] for k in wanted})
        row += n
    return answers
