"""A training image's view as a recipe: which sample, where its crop sits, whether it is flipped.

A recipe is drawn as a pure function of (seed, epoch, sample index) by a
counter-based hash, not from a running RNG: the same view on any machine, for
any number of loader processes or ranks, and after any resume, at no cost per
image. A batch of recipes is rendered at once with tensor operations on the
data set's stored images (``StoredImages``), bit for bit what torchvision's
``RandomCrop(padding) + RandomHorizontalFlip + ToTensor + Normalize`` make of
the same crop and flip (tests check it). Both sides of the wire can render a
recipe, so it can key a store of teacher answers or travel instead of pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_STREAMS = {"dy": 1, "dx": 2, "flip": 3}


@dataclass(frozen=True)
class StoredImages:
    """A training split held in memory, with the augmentation its data set trains with.

    ``images`` is N x C x H x W: uint8 (scaled by 1/255 when rendered, as ``ToTensor``
    does) or float (used as stored). A view is a crop of the image's own size from the
    image zero-padded by ``pad`` on each side (``pad`` 0: no crop), flipped left-right
    at random when ``flip``, then normalised by ``mean`` and ``std``.
    """
    images: torch.Tensor
    labels: torch.Tensor
    pad: int
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "StoredImages":
        """The images at ``indices``, renumbered 0..len-1 (as ``torch.utils.data.Subset`` does)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return replace(self, images=self.images[indices], labels=self.labels[indices])

    def unaugmented(self) -> "StoredImages":
        return replace(self, pad=0, flip=False)


@dataclass(frozen=True)
class Recipes:
    """The views of a batch: sample ``indices`` and, per image, crop offsets ``dy, dx`` in [0, 2*pad]
    (``pad`` is the centred crop) and ``flip``."""
    indices: torch.Tensor   # int64
    dy: torch.Tensor        # int64
    dx: torch.Tensor        # int64
    flip: torch.Tensor      # bool

    def __len__(self) -> int:
        return len(self.indices)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: every input bit moves every output bit (uint64, wrapping)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def counter_hash(seed: int, epoch: int, indices, stream: int) -> np.ndarray:
    """A uint64 per index, a pure function of (seed, epoch, index, stream)."""
    with np.errstate(over="ignore"):
        key = _mix(np.array([seed], dtype=np.uint64) + _GOLDEN)
        key = _mix(key ^ (np.array([epoch], dtype=np.uint64) * _GOLDEN))
        key = _mix(key ^ (np.array([stream], dtype=np.uint64) * _GOLDEN))
        return _mix(key ^ np.asarray(indices, dtype=np.int64).astype(np.uint64) * _GOLDEN)


def _below(h: np.ndarray, n: int) -> torch.Tensor:
    """Integers in [0, n) from hashes: the top 53 bits as a uniform fraction, times n."""
    fraction = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return torch.from_numpy(np.minimum((fraction * n).astype(np.int64), n - 1))


def draw(seed: int, epoch: int, indices: torch.Tensor, pad: int, flip: bool) -> Recipes:
    """Each image's view in ``epoch`` of a run seeded ``seed`` (the same whatever batch it is in)."""
    idx = indices.cpu().numpy()
    side = 2 * pad + 1
    dy = _below(counter_hash(seed, epoch, idx, _STREAMS["dy"]), side) if pad else torch.zeros(len(idx), dtype=torch.long)
    dx = _below(counter_hash(seed, epoch, idx, _STREAMS["dx"]), side) if pad else torch.zeros(len(idx), dtype=torch.long)
    flips = (_below(counter_hash(seed, epoch, idx, _STREAMS["flip"]), 2) == 1) if flip \
        else torch.zeros(len(idx), dtype=torch.bool)
    return Recipes(indices.cpu().long(), dy, dx, flips)


def render(stored: StoredImages, recipes: Recipes) -> torch.Tensor:
    """The views as a normalised float32 batch, B x C x H x W."""
    images = stored.images[recipes.indices]
    b, c, h, w = images.shape
    if stored.pad:
        images = F.pad(images, (stored.pad,) * 4)
    rows = recipes.dy[:, None] + torch.arange(h)                                   # B x H
    across = torch.arange(w)
    cols = recipes.dx[:, None] + torch.where(recipes.flip[:, None], w - 1 - across, across)  # B x W
    views = images[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
                   rows[:, None, :, None], cols[:, None, None, :]]
    views = views.to(torch.float32).div(255) if views.dtype == torch.uint8 else views.to(torch.float32)
    mean = torch.as_tensor(stored.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(stored.std, dtype=torch.float32).view(-1, 1, 1)
    return views.sub_(mean).div_(std)
