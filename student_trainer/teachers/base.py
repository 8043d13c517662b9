"""What every teacher client offers the training loop: one contract for every kind of teacher.

``submit(images)`` returns at once a ``TeacherFuture`` of the outputs; ``infer(images)``
is ``submit(images).result()``. How a kind gets the answer is its own business:
``in_process.InProcessTeacher`` runs a model in the caller's thread,
``remote.RemoteTeacherClient`` sends chunks within the server's max batch and
waits out a teacher that is away, ``stored.StoredTeacher`` asks nobody. What
the trainer needs to know about a client it asks the client (``takes_recipes``,
``asks_live_teacher``, ``uses``), never its class or URL scheme.

The data types (``types``) and errors (``errors``) are re-exported here, so one
import gives the whole contract.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from concurrent.futures import Future

import torch

from common.reductions import LOGITS
from student_trainer.teachers.errors import TeacherRefused, TeacherUnavailable, one_line
from student_trainer.teachers.types import ClientCounters, ServedDataSet, ServerStats, TeacherFuture, TeacherInfo

log = logging.getLogger("student_trainer.teacher")

__all__ = ["ClientCounters", "ServedDataSet", "ServerStats", "TeacherClient", "TeacherFuture", "TeacherInfo",
           "TeacherRefused", "TeacherUnavailable"]


class TeacherClient(ABC):
    """A teacher somewhere: ``submit`` / ``infer`` turn an image batch into logits (and features).

    A kind implements ``from_url``, ``describe``, ``submit`` and ``server_stats``
    (or inherits ``submit`` from ``InProcessTeacher`` / ``RemoteTeacherClient`` and
    implements their one-batch ``_infer``), says in ``uses`` which of the
    trainer's teacher flags it takes, and is registered in ``CLIENTS``.
    """
    # Which of the trainer's teacher flags (options.FLAGS) this kind uses; ``connect`` refuses the others.
    uses: frozenset[str] = frozenset()
    # True: a batch that comes with its views travels as their recipes (``--send recipes``), which the
    # teacher renders from its own copy of the training split; ``submit`` then needs ``views``.
    takes_recipes: bool = False
    # False: no teacher is asked at all (answers come from a store); the trainer must find every answer there.
    asks_live_teacher: bool = True

    def __init__(self):
        self.url = type(self).__name__  # where the teacher is, for messages: never a secret
        self.counters = ClientCounters()
        self._stats_warned = False

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, **options) -> TeacherClient:
        """The client of the teacher at ``url``, a URL of this kind; ``options`` are ``connect``'s."""

    @abstractmethod
    def describe(self) -> TeacherInfo: ...

    @abstractmethod
    def submit(self, images: torch.Tensor, outputs=(LOGITS,), views=None, verify: bool = False) -> Future:
        """Ask the teacher about ``images``; returns at once a future of {output: float32 CPU tensor}.

        The future ends in the outputs, or in the error that stopped them
        (``TeacherUnavailable``, ``TeacherRefused``, ...); the time a caller is
        blocked in its ``result`` counts in ``counters.wait_seconds``. ``images``
        must not change until the future is done. Callbacks added to the future
        may run on a worker thread: they must not block there on another answer.
        ``views``: the rows as recipes (``common.views.Views``), sent instead of
        the pixels where ``takes_recipes``; such a client refuses a batch without them.
        ``verify``: the images re-ask about answers a store holds, to check them (``--verify-store``),
        counted apart (``counters.verify_images``, and the server's own where it can).
        """

    def infer(self, images: torch.Tensor, outputs=(LOGITS,)) -> dict[str, torch.Tensor]:
        """``submit(images, outputs).result()``: the outputs, float32 on the CPU."""
        return self.submit(images, outputs).result()

    @abstractmethod
    def server_stats(self) -> ServerStats: ...

    def try_server_stats(self) -> ServerStats:
        """``server_stats()``, or ``ServerStats.unavailable(reason)`` when they cannot be read.

        The server's counts are telemetry: restricted statistics, a closed metrics
        port, a failing Stats call or a teacher gone never stop training. Warns once.
        """
        try:
            return self.server_stats()
        except Exception as e:  # whatever it was, the run goes on without the server's figures
            reason = one_line(e)
            if not self._stats_warned:
                self._stats_warned = True
                log.warning("cannot read the counts of the teacher at %s (%s); the summary records them as "
                            "null", self.url, reason)
            return ServerStats.unavailable(reason)

    def served_manifest(self):
        """The content manifest of the folder the teacher renders recipes from (``types.ServedManifest``), to
        name the first file where this run's copy differs; None where the kind cannot say."""
        return None

    def close(self) -> None:
        """Let go of what the client holds (connections, threads); a kind that holds nothing keeps this."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
