"""A teacher in this process: the whole batch in one forward, in the caller's thread, no wire.

In this process the teacher shares the student's cores: a forward on a worker
thread beside the student's would only fight it for them (twice the threads on
the same cores), so the answer is computed before ``submit`` returns. With no
wire there is nothing to chunk, retry or connect to: none of the trainer's
teacher-connection flags applies (``uses`` is empty).
"""
from __future__ import annotations

from abc import abstractmethod
from concurrent.futures import Future

import torch

from common.reductions import LOGITS
from student_trainer.teachers.base import TeacherClient
from student_trainer.teachers.types import TeacherFuture


class InProcessTeacher(TeacherClient):
    """A model run here. A kind implements ``from_url``, ``describe``, ``_infer`` and ``server_stats``."""

    def submit(self, images: torch.Tensor, outputs=(LOGITS,), views=None, verify: bool = False) -> Future:
        """The answer at once (or its error), in a done future; ``views`` are not needed, the pixels are here."""
        future = TeacherFuture(lambda: self.counters)
        try:
            result, sent, received = self._infer(images.detach(), list(outputs))
            self.counters.add_answer(images.shape[0], sent, received, verify)
            future.set_result(result)
        except Exception as e:  # the future carries it, as a remote kind's does
            future.set_exception(e)
        return future

    @abstractmethod
    def _infer(self, images: torch.Tensor, outputs: list[str]) -> tuple[dict[str, torch.Tensor], int, int]:
        """(outputs, bytes sent, bytes received: 0 and 0 without a wire) for the whole batch. The outputs must
        be ordinary tensors, as a decoded reply is: inference-mode ones cannot enter autograd (FitNet, CRD)."""
