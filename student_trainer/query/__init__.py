"""Query policies: which images of a batch the teacher is asked about (and the student trains on).

A new policy is one file holding one ``QueryPolicy`` subclass and one entry in ``POLICIES``.

``all``         conventional KD: every image, unmixed (k = N)
``unix``        UNIX-KD: a no-grad uncertainty pass on all N, the k most uncertain, mixed
``unix-nomix``  the same selection without mixing (an ablation)
``random``      a random k of N, unmixed, no uncertainty pass (the simplest way to save teacher images)
``cached``      every image, unmixed; each image's answer is asked for once every R visits and
                reused in between (beyond the paper: fewer teacher images, no uncertainty pass)
``replay``      every image, unmixed; its first V views are asked for and stored with their recipes
                in --answer-store, later visits replay a stored view with its answer (beyond the paper)
"""
from __future__ import annotations

import argparse

from student_trainer.query.all_images import AllImages
from student_trainer.query.base import PolicyContext, Query, QueryPolicy
from student_trainer.query.cached import RememberedAnswers
from student_trainer.query.random_subset import RandomSubset
from student_trainer.query.replay import Replay
from student_trainer.query.uncertain import Uncertain, UncertainUnmixed

POLICIES: dict[str, type[QueryPolicy]] = {
    p.name: p for p in (AllImages, Uncertain, UncertainUnmixed, RandomSubset, RememberedAnswers, Replay)}


def build_policy(args: argparse.Namespace, dataset_size: int = 0, context: PolicyContext | None = None) -> QueryPolicy:
    return POLICIES[args.query](args, dataset_size, context)


__all__ = ["POLICIES", "PolicyContext", "Query", "QueryPolicy", "build_policy"]
