"""Data order and augmentation as pure functions of (seed, epoch, position).

A plain shuffled DataLoader draws its order and each worker's augmentation seed
from RNG state that a resumed run cannot rebuild mid-epoch, and the draws change
with ``--workers``. Here the sampler yields ``(epoch, index)`` keys from a
per-epoch permutation, and each item is augmented under its own seed, so a
run resumed at any step sees exactly the batches the uninterrupted run saw,
whatever the number of loader processes.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

_MIX = 1_000_003


class EpochSampler(Sampler):
    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.epoch, self.start = 1, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next pass covers ``epoch``'s permutation from position ``start``."""
        self.epoch, self.start = epoch, start

    def permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * _MIX + epoch))

    def __iter__(self):
        for index in self.permutation(self.epoch)[self.start:].tolist():
            yield self.epoch, index

    def __len__(self) -> int:
        return self.size - self.start


class SeededItems(Dataset):
    """Wraps a data set so item ``(epoch, index)`` is augmented under its own seed.

    Items are ``(image, label, index)``: losses that keep per-image state (CRD's
    memory bank) need the data-set index.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * _MIX + epoch) * _MIX + index) % (1 << 63))
            image, label = self.dataset[index]
        return image, label, index
