"""The cheapest way to save teacher images: a random k of N, unmixed, no uncertainty pass."""
from __future__ import annotations

import torch

from student_trainer.engine.timing import NULL_TIMER
from student_trainer.query.base import QueryPolicy, SubsetConfig, unmixed


class RandomSubset(QueryPolicy):
    name = "random"
    about = "a random k of N, unmixed, no uncertainty pass"
    reads_weights = False
    config_type = SubsetConfig

    def select(self, student, images, labels, indices, timer=NULL_TIMER, views=None):
        with timer.phase("mixing"):
            keep = torch.randperm(images.shape[0], generator=self.gen)[:self.k_for(images.shape[0])]
            return unmixed(images, labels, indices, keep.to(images.device), views=views)
