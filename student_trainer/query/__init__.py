"""Query policies: which images of a batch the teacher is asked about (and the student trains on).

A new policy is one file holding one ``QueryPolicy`` subclass and one entry in ``POLICIES``.

``all``         conventional KD: every image, unmixed (k = N)
``unix``        UNIX-KD: a no-grad uncertainty pass on all N, the k most uncertain, mixed
``unix-nomix``  the same selection without mixing (an ablation)
``random``      a random k of N, unmixed, no uncertainty pass (the simplest way to save teacher images)
``cached``      every image, unmixed; each image's answer is asked for once every R visits and
                reused in between (beyond the paper: fewer teacher images, no uncertainty pass)
``replay``      every image, unmixed; its first V views are asked for and stored with their recipes
                in --replay-store, later visits replay a stored view with its answer (beyond the paper)
"""
from __future__ import annotations

from student_trainer.query.all_images import AllImages
from student_trainer.query.base import PolicyConfig, PolicyContext, Query, QueryPolicy, SubsetConfig
from student_trainer.query.cached import CachedConfig, RememberedAnswers
from student_trainer.query.random_subset import RandomSubset
from student_trainer.query.replay import Replay, ReplayConfig
from student_trainer.query.uncertain import Uncertain, UncertaintyConfig, UncertainUnmixed, UnixConfig

POLICIES: dict[str, type[QueryPolicy]] = {
    p.name: p for p in (AllImages, Uncertain, UncertainUnmixed, RandomSubset, RememberedAnswers, Replay)}


def build_policy(name: str, config: PolicyConfig | None = None, dataset_size: int = 0,
                 context: PolicyContext | None = None) -> QueryPolicy:
    """``--query name`` built from its config (its defaults where None)."""
    return POLICIES[name](config, dataset_size, context)


__all__ = ["POLICIES", "CachedConfig", "PolicyConfig", "PolicyContext", "Query", "QueryPolicy", "ReplayConfig",
           "SubsetConfig", "UncertaintyConfig", "UnixConfig", "build_policy"]
