"""Data order and augmentation as pure functions of (seed, epoch, position).

A plain shuffled DataLoader draws its order and each worker's augmentation seed
from RNG state that a resumed run cannot rebuild mid-epoch, and the draws change
with ``--workers``. Here the sampler yields ``(epoch, index)`` keys from a
per-epoch permutation, and each image's view is a pure function of its key, so a
run resumed at any step sees exactly the batches the uninterrupted run saw,
whatever the number of loader processes. Two ways to make the views
(``--augment-draws``): ``RenderedViews`` draws a batch's recipes with a
counter-based hash and renders them at once from the images in memory
(``common.views``); ``SeededItems`` runs the data set's own per-image transforms
under a seed per image (any data set, files included; the draws of earlier releases).

Under ``torchrun`` the order is sharded by global batch: the epoch's permutation
is cut into global batches of ``--batch-size`` N, and rank r of P takes the
slice ``[r*N/P, (r+1)*N/P)`` of each, so at every step the P ranks together
train the same N images a single process would. A last partial global batch of
m images is cut the same way into P shares of ``m // P``; its ``m % P`` last
images (fewer than P) are not trained that epoch. Augmentation depends on the
image, not on the rank, so the images are augmented alike for any P.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

from common.views import Views, render_views

_MIX = 1_000_003


class EpochSampler(Sampler):
    """Keys ``(epoch, index)`` of one rank's share of each global batch (all of them in one process)."""

    def __init__(self, size: int, seed: int, batch_size: int = 1, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"a global batch of {batch_size} images does not split over {world_size} processes")
        self.size, self.seed = size, seed
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.epoch, self.start = 1, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next pass covers ``epoch``'s permutation from position ``start`` (a whole number of global
        batches when the world is larger than one)."""
        if self.world_size > 1 and start % self.batch_size:
            raise ValueError(f"position {start} is not at a global batch of {self.batch_size}")
        self.epoch, self.start = epoch, start

    def permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * _MIX + epoch))

    def __iter__(self):
        order = self.permutation(self.epoch)[self.start:].tolist()
        if self.world_size == 1:
            yield from ((self.epoch, index) for index in order)
            return
        for first in range(0, len(order), self.batch_size):
            batch = order[first:first + self.batch_size]
            share = len(batch) // self.world_size
            for index in batch[self.rank * share:(self.rank + 1) * share]:
                yield self.epoch, index

    def __len__(self) -> int:
        left = self.size - self.start
        if self.world_size == 1:
            return left
        full, partial = divmod(left, self.batch_size)
        return (full * self.batch_size + partial - partial % self.world_size) // self.world_size


class SeededItems(Dataset):
    """Wraps a data set so item ``(epoch, index)`` is augmented under its own seed.

    Items are ``(image, label, index)``: losses that keep per-image state (CRD's
    memory bank) need the data-set index. Its views are not recipes (``recipes``
    None; ``why_not_recipes`` says why).
    """
    collate = None
    recipes = None

    def __init__(self, dataset: Dataset, seed: int, why_not_recipes: str = ""):
        self.dataset, self.seed, self.why_not_recipes = dataset, seed, why_not_recipes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * _MIX + epoch) * _MIX + index) % (1 << 63))
            image, label = self.dataset[index]
        return image, label, index


class RenderedViews(Dataset):
    """Keys ``(epoch, index)`` rendered a batch at a time (``__getitems__``, which the DataLoader calls
    with a batch's keys, in a loader process when there are ``--workers``): ``(images, labels, indices,
    recipes)`` as one batch, the views drawn as recipes (``recipes``: ``Views.as_array`` rows, int64, so
    they ride through the loader as a tensor). ``source``: the split held in memory
    (``common.views.StoredImages``) or read from files (``common.image_files.ImageFiles``)."""

    why_not_recipes = ""

    def __init__(self, source, seed: int):
        self.source, self.seed = source, seed
        self.lookahead = None  # the policy's (QueryPolicy.loader_lookahead): rows to render in place of drawn ones

    @property
    def recipes(self):
        """The split the recipes are drawn on and rendered from (a server that holds it renders them too)."""
        return self.source

    @staticmethod
    def collate(batch):
        """Its batches come already stacked."""
        return batch

    def __len__(self) -> int:
        return len(self.source)

    def __getitems__(self, keys: list[tuple[int, int]]):
        epochs = {epoch for epoch, _ in keys}
        if len(epochs) != 1:
            raise ValueError(f"a batch spans epochs {sorted(epochs)}")
        indices = torch.tensor([index for _, index in keys], dtype=torch.long)
        if self.lookahead is not None:
            return self._looked_ahead(epochs.pop(), indices)
        images, recipes = self.source.drawn_and_rendered(self.seed, epochs.pop(), indices)
        return (images, self.source.labels[indices], indices,
                torch.from_numpy(self.source.to_split(Views(recipes)).as_array()))

    def _looked_ahead(self, epoch: int, indices: torch.Tensor):
        """The batch with the lookahead's rows rendered, and a fifth part: the rows drawn."""
        drawn = self.source.to_split(Views(self.source.draw(self.seed, epoch, indices))).as_array()
        rows = self.lookahead(drawn)
        images = render_views(self.source, self.source.to_rows(Views.from_array(rows)))
        return images, self.source.labels[indices], indices, torch.from_numpy(rows), torch.from_numpy(drawn)

    def __getitem__(self, key):
        images, labels, indices, _ = self.__getitems__([key])
        return images[0], int(labels[0]), int(indices[0])


DRAWS = ("batched", "per-item")


def training_items(spec, draws: str, seed: int) -> RenderedViews | SeededItems:
    """The training split as the loader reads it: each view a recipe, a batch drawn and rendered at once
    (``batched``), else each image through the data set's own transforms under its own seed (``per-item``,
    the draws of earlier releases, and any data set without a view source)."""
    if draws == "batched" and spec.train_views is not None:
        return RenderedViews(spec.train_views, seed)
    why = (f"{spec.name} has no view source" if spec.train_views is None
           else "--augment-draws per-item draws each view image by image")
    return SeededItems(spec.train, seed, why)
