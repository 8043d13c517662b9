"""UNIX-KD's step as plain functions on tensors, for a training loop of one's own.

Xu et al. 2020: each step the student scores the whole batch of N images without gradients, the batch is
sorted by uncertainty, every image is mixed with a shuffled partner (the more certain, the more mixed), and
only the k most uncertain mixed images go to the teacher and are trained on::

    batch = unix_select(student, images, labels, k=48)            # no gradients; k mixed images
    logits = student(batch.images)
    loss = kd_loss(logits, teacher(batch.images), T=4.0) + batch.task_loss(logits)

These are the functions the trainer's ``unix`` policy (``student_trainer.query.uncertain``) runs:
``uncertainty_scores`` and ``shuffle_and_mix`` (``select_and_mix`` with a fresh permutation), so a step here
selects and mixes as a step of ``python -m student_trainer --query unix`` does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from student_trainer.distill.functional import kd_loss, mixed_ce
from student_trainer.query.mixing import scaled_for_batch, shuffle_and_mix
from student_trainer.query.uncertain import BN_MODES, uncertainty_scores
from student_trainer.query.uncertainty import UNCERTAINTY

__all__ = ["UnixBatch", "unix_select", "kd_loss", "mixed_ce"]


@dataclass
class UnixBatch:
    """The k images the teacher is asked about and the student trains on, most uncertain first.

    Row i is ``(1 - mix[i]) * images[indices[i]] + mix[i] * images[partners[i]]`` of the batch given, its
    label ``labels_a[i]`` with weight ``1 - mix[i]`` and ``labels_b[i]`` with weight ``mix[i]``."""
    images: torch.Tensor    # (k, C, H, W): the mixed images
    labels_a: torch.Tensor  # (k,): the label of each selected image
    labels_b: torch.Tensor  # (k,): the label of its partner
    mix: torch.Tensor       # (k,): the partner's weight (0: unmixed)
    indices: torch.Tensor   # (k,): each selected image's row in the batch given
    partners: torch.Tensor  # (k,): its partner's row
    scores: torch.Tensor    # (N,): the student's uncertainty about every image of the batch
    lam: float              # this step's mixing strength (the largest weight a partner can get)

    def __len__(self) -> int:
        return self.images.shape[0]

    def soft_targets(self, num_classes: int) -> torch.Tensor:
        """(k, num_classes) the mixed labels as distributions: ``(1 - mix) * onehot(a) + mix * onehot(b)``, as
        timm's ``Mixup`` gives them to ``SoftTargetCrossEntropy``."""
        mix = self.mix.float().unsqueeze(1)
        return ((1 - mix) * F.one_hot(self.labels_a, num_classes).float()
                + mix * F.one_hot(self.labels_b, num_classes).float())

    def task_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the mixed labels, ``(1 - m) CE(a) + m CE(b)`` per image, averaged (the trainer's)."""
        return mixed_ce(logits, self.labels_a, self.labels_b, self.mix.to(logits.dtype))


def checked_knobs(k: int, n: int, batch_size: int | None, b: float, w: float, selection: str,
             uncertainty_bn: str) -> tuple[int, float]:
    """(k, b) for a batch of n images: scaled to keep k/N and b/N where n < ``batch_size`` (the last batch
    of an epoch); a one-line ValueError for a knob out of range."""
    if selection not in UNCERTAINTY:
        raise ValueError(f"unknown selection {selection!r}; choose one of {', '.join(sorted(UNCERTAINTY))}")
    if uncertainty_bn not in BN_MODES:
        raise ValueError(f"unknown uncertainty_bn {uncertainty_bn!r}; choose one of {', '.join(BN_MODES)}")
    if w < 0:
        raise ValueError(f"w must be >= 0, got {w}")
    full = n if batch_size is None else batch_size
    if not 1 <= k <= full:
        hint = " (give batch_size= to scale k down for a smaller last batch)" if batch_size is None and k > n else ""
        raise ValueError(f"k must be between 1 and the batch size {full}, got {k}{hint}")
    if n > full:
        raise ValueError(f"a batch of {n} images is larger than batch_size {full}")
    return scaled_for_batch(n, full, k, b)


def unix_select(student: nn.Module, images: torch.Tensor, labels: torch.Tensor, k: int, *, b: float = 32.0,
                w: float = 10.0, selection: str = "entropy", uncertainty_bn: str = "train",
                lam: float | None = None, mix: bool = True, batch_size: int | None = None,
                generator: torch.Generator | None = None) -> UnixBatch:
    """UNIX-KD's selection and mixing of one batch: the k of ``images`` (N, C, H, W) to ask the teacher about.

    The student scores every image without gradients (``selection``: ``entropy``, ``confidence``, ``margin``
    or ``random``; BatchNorm in that pass as ``uncertainty_bn`` says: ``train`` is the reference's, batch
    statistics that also update the running ones, ``batch`` leaves them alone, ``eval`` uses them); the batch
    is sorted most uncertain first, image r mixed with a shuffled partner with weight
    ``lam * sigmoid(w * (r/N - (2b-1)/(2N)))``, and the first k kept. ``lam``: None draws it from Beta(1, 1)
    (uniform) with ``generator``, as the paper does each step; ``mix=False`` is the no-mixing ablation
    (``lam = 0``: the k most uncertain as they are). ``batch_size``: the full batch's N, where a smaller
    last batch should have k and b scaled to keep k/N and b/N (None: N is the batch given).
    ``generator``: a CPU ``torch.Generator`` for the draws (the partners, ``lam``, ``random`` scores), to
    repeat a run; None uses torch's global one. The student is left in the mode it was in.
    """
    if images.dim() < 2 or labels.shape[:1] != images.shape[:1]:
        raise ValueError(f"images (N, ...) and labels (N,) disagree: {list(images.shape)} and {list(labels.shape)}")
    k, b = checked_knobs(k, images.shape[0], batch_size, b, w, selection, uncertainty_bn)
    scores = uncertainty_scores(student, images, selection, uncertainty_bn, generator)
    if not mix:
        lam = 0.0
    elif lam is None:
        lam = float(torch.rand((), generator=generator))
    chosen = shuffle_and_mix(images, labels, scores, k=k, b=b, w=w, lam=lam, generator=generator)
    return UnixBatch(chosen.images, chosen.labels_a, chosen.labels_b, chosen.mix, chosen.selected,
                     chosen.partners, scores, float(lam))
