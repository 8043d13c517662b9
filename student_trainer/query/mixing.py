"""UNIX-KD's uncertainty-aware selection and mixup, as one plain function."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class MixedBatch:
    images: torch.Tensor    # (k, C, H, W): the mixed images for the teacher, most uncertain first
    labels_a: torch.Tensor  # (k,): label of each selected image
    labels_b: torch.Tensor  # (k,): label of its partner
    mix: torch.Tensor       # (k,): partner weight m_i (0 = unmixed)
    selected: torch.Tensor  # (k,): batch index of each selected image
    partners: torch.Tensor  # (k,): batch index of each partner
    dropped: torch.Tensor   # (N-k,): batch indices never sent to the teacher


def mixing_mask(n: int, b: float, w: float, lam: float) -> torch.Tensor:
    """m_r = lam * sigmoid(w * (r/n - (2b-1)/(2n))) for ranks r = 0..n-1 (0 = most uncertain)."""
    r = torch.arange(n, dtype=torch.float32)
    return lam * torch.sigmoid(w * (r / n - (2 * b - 1) / (2 * n)))


def select_and_mix(images: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, *,
                   k: int, b: float, w: float, lam: float, perm: torch.Tensor) -> MixedBatch:
    """Sort a batch by uncertainty, mix each image with a partner, keep the k most uncertain.

    With ``rank`` the batch indices sorted by ``scores`` descending (rank 0 is the
    most uncertain image) and ``perm`` a permutation of the whole batch:

        m_r   = lam * sigmoid(w * (r/N - (2b-1)/(2N)))
        x~_r  = (1 - m_r) * x[rank[r]] + m_r * x[perm[r]]      r = 0..k-1

    Certain images (large r) are mixed more, so the teacher is asked about
    harder, more informative inputs; the N-k most certain are dropped. ``b``
    places the sigmoid's midpoint between ranks b-1 and b, ``w`` its sharpness;
    ``lam`` is drawn per batch (Beta(1,1) in the paper). Conventional KD is
    ``k = N, lam = 0``: the unmixed batch, sorted.

    Raises ValueError for k outside 1..N or a ``perm`` of the wrong length.
    """
    n = images.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the batch size {n}, got {k}")
    if perm.shape != (n,):
        raise ValueError(f"perm must be a permutation of {n} indices, got shape {tuple(perm.shape)}")
    if labels.shape[0] != n or scores.shape[0] != n:
        raise ValueError(f"images, labels and scores disagree on the batch size: "
                         f"{n}, {labels.shape[0]}, {scores.shape[0]}")
    rank = torch.argsort(scores.to(images.device), descending=True, stable=True)
    selected, dropped = rank[:k], rank[k:]
    partners = perm.to(images.device)[:k]
    mix = mixing_mask(n, b, w, lam)[:k].to(images.device)
    m = mix.view(-1, *([1] * (images.dim() - 1))).to(images.dtype)
    mixed = (1 - m) * images[selected] + m * images[partners]
    return MixedBatch(mixed, labels[selected], labels[partners], mix, selected, partners, dropped)


def shuffle_and_mix(images: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, *, k: int, b: float,
                    w: float, lam: float, generator: torch.Generator | None = None) -> MixedBatch:
    """``select_and_mix`` with each image's partner from a fresh permutation of the batch, drawn from
    ``generator`` (a CPU one; None: torch's global one): UNIX-KD's step once the scores are known."""
    perm = torch.randperm(images.shape[0], generator=generator).to(images.device)
    return select_and_mix(images, labels, scores, k=k, b=b, w=w, lam=lam, perm=perm)


def scaled_for_batch(n: int, batch_size: int, k: int, b: float) -> tuple[int, float]:
    """k and b for a last partial batch of n < batch_size images: scaled to keep k/N and b/N."""
    if n == batch_size:
        return k, b
    return max(1, min(n, math.ceil(k * n / batch_size))), b * n / batch_size
