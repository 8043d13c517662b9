"""Uncertainty measures: higher score = the student is less sure = more worth a teacher query.

A registry of plain functions ``probs (N, C) -> scores (N,)``; a new measure is
one entry. The four are the reference implementation's strategies.
"""
from __future__ import annotations

from typing import Callable

import torch

UncertaintyFn = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
UNCERTAINTY: dict[str, UncertaintyFn] = {}


def register(name: str):
    def add(fn: UncertaintyFn) -> UncertaintyFn:
        UNCERTAINTY[name] = fn
        return fn
    return add


@register("entropy")
def entropy(probs: torch.Tensor, generator=None) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)


@register("confidence")
def least_confidence(probs: torch.Tensor, generator=None) -> torch.Tensor:
    return 1.0 - probs.max(dim=1).values


@register("margin")
def margin(probs: torch.Tensor, generator=None) -> torch.Tensor:
    if probs.shape[1] < 2:
        return torch.zeros(probs.shape[0], device=probs.device)
    top2 = probs.topk(2, dim=1).values
    return -(top2[:, 0] - top2[:, 1])


@register("random")
def random_scores(probs: torch.Tensor, generator=None) -> torch.Tensor:
    return torch.rand(probs.shape[0], generator=generator).to(probs.device)


def uncertainty(name: str, probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    try:
        fn = UNCERTAINTY[name]
    except KeyError:
        raise ValueError(f"unknown selection {name!r}; choose one of {sorted(UNCERTAINTY)}") from None
    return fn(probs, generator)
