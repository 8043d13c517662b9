"""Conventional KD's policy: the teacher sees every image, unmixed (k = N)."""
from __future__ import annotations

from student_trainer.engine.timing import NULL_TIMER
from student_trainer.query.base import QueryPolicy, unmixed


class AllImages(QueryPolicy):
    name = "all"
    about = "every image, unmixed (conventional KD; k = N)"
    reads_weights = False

    def select(self, student, images, labels, indices, timer=NULL_TIMER, views=None):
        return unmixed(images, labels, indices, views=views)
