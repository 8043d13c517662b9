"""What the clients of a teacher across the network share, so that each kind keeps only what differs.

A remote kind (``grpc://``, ``grpcs://``, ``triton://``) is opened from its URL
(``from_url``: the kind's ``parse_url`` says where the URL points, the token is
read from its file), sends a batch larger than one request may carry (the
server's max batch, and its message limit for the outputs asked) as chunks (at
most ``max_in_flight`` on the wire at once, ``chunks.ask_in_chunks``), asks the
teacher what it is once, reconnects often enough to find a restarted teacher
within seconds, and marks the server's counts where the server may have
restarted since the previous read (a restarted server counts from 0 again).

One retry loop serves every remote kind (``RetryLoop``, a client's ``_retrying``): every call has a
deadline; a failure that means "the teacher is not there right now" (gRPC
``UNAVAILABLE`` / ``DEADLINE_EXCEEDED``, a refused connection, a model that is
being reloaded: each kind says which in ``_classify``) is retried with
exponential backoff and jitter until ``--teacher-max-wait`` seconds have passed
since the call began, then raises ``TeacherUnavailable`` in one line. Any other
error from the teacher is final: ``TeacherRefused`` at once, in one line. The
same request is resent on a retry, and images are counted once, when their
answer arrives.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
import threading
import time
from abc import abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Callable, NamedTuple, TypeVar
from urllib.parse import SplitResult

import grpc
import torch

from common import codec
from common.reductions import LOGITS
from common.tokens import read_token
from common.views import Views
from student_trainer.teachers.base import TeacherClient
from student_trainer.teachers.chunks import ask_in_chunks, chunk_rows
from student_trainer.teachers.errors import TeacherRefused, TeacherUnavailable, squeeze
from student_trainer.teachers.options import DEFAULTS
from student_trainer.teachers.types import ServerStats, TeacherFuture, TeacherInfo

log = logging.getLogger("student_trainer.teacher")
T = TypeVar("T")
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
REPLY_ITEMSIZE = 4  # every remote kind asks for its outputs in float32


class Failure(NamedTuple):
    """What a client kind makes of an exception from one of its calls (see ``_classify``)."""
    retryable: bool
    code: grpc.StatusCode | None
    details: str


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by a total wait per call."""
    max_wait: float = DEFAULTS.max_wait
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds before retry ``attempt`` (0-based): half fixed, half random, so clients spread out."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** attempt)
        return ceiling * (0.5 + 0.5 * rng.random())


def has_host_and_port(parts: SplitResult) -> bool:
    """Whether a split URL names a host and a port (one that is not a number, or out of range, is none)."""
    try:
        return bool(parts.hostname and parts.port)
    except ValueError:
        return False


def check_recipes(images: torch.Tensor, views: Views | None) -> None:
    """A client that sends recipes needs one per image: it has no pixels to fall back on."""
    if views is None or len(views) != images.shape[0]:
        raise ValueError(f"--send recipes: a batch of {images.shape[0]} images came with "
                         f"{'no' if views is None else len(views)} view recipes")


class RetryLoop:
    """One client's calls to a teacher that may be away: ``run`` retries them with backoff and jitter
    while ``classify`` calls the failure retryable, within ``policy.max_wait`` seconds a call."""

    def __init__(self, policy: RetryPolicy, classify: Callable[[Exception], Failure | None],
                 closed: threading.Event):
        """``closed`` set: calls waiting to retry give up at once."""
        self.policy, self.classify, self.closed = policy, classify, closed
        self.retries = 0  # retried calls in all, for logs and tests
        self._rng = random.Random()
        self._lock = threading.Lock()

    def run(self, url: str, what: str, call: Callable[[], T]) -> T:
        """``call()`` until it answers. ``what`` names the call in messages. Raises ``TeacherUnavailable``
        when the wait runs out and ``TeacherRefused`` at once on a final error, each one line."""
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                answer = call()
            except (TeacherUnavailable, TeacherRefused):
                raise
            except Exception as e:
                failure = self.classify(e)
                if failure is None:
                    raise
                if not failure.retryable:
                    raise TeacherRefused(url, what, failure.code, failure.details) from None
                last = f"{failure.code.name if failure.code else 'unreachable'}: {squeeze(failure.details)}"
                self._wait(url, what, attempt, start, last)
                attempt += 1
                continue
            if attempt:
                log.warning("teacher at %s answered %s again after %d retries (%.1f s)", url, what, attempt,
                            time.monotonic() - start)
            return answer

    def _wait(self, url: str, what: str, attempt: int, start: float, last: str) -> None:
        """Sleep before retry ``attempt`` + 1 of a call begun at ``start``, or give up in one line: the
        wait ran out, or the client was closed meanwhile."""
        waited = time.monotonic() - start
        left = self.policy.max_wait - waited
        if left <= 0:
            raise TeacherUnavailable(
                f"teacher at {url} gave no answer to {what} for {waited:.0f} s (the limit, "
                f"--teacher-max-wait, is {self.policy.max_wait:g} s); last error {last}") from None
        with self._lock:
            delay = min(self.policy.backoff(attempt, self._rng), left)
            self.retries += 1
        log.warning("teacher at %s did not answer %s (%s); retry %d in %.1f s, %.0f of %g s waited",
                    url, what, last, attempt + 1, delay, waited, self.policy.max_wait)
        if self.closed.wait(delay):
            raise TeacherUnavailable(f"the client of the teacher at {url} was closed while "
                                     f"{what} waited for it; last error {last}") from None


class RemoteTeacherClient(TeacherClient):
    """A teacher behind a network address. A kind implements ``parse_url``, ``_describe``, ``_counts``
    and ``_infer`` (and ``_infer_views`` if it takes recipes), sends each call through ``_retrying``,
    and says in ``_classify`` which of its errors are worth a retry."""
    max_in_flight = 4  # chunks on the wire at once

    def __init__(self, *, wire_dtype: str = DEFAULTS.wire_dtype, timeout: float = DEFAULTS.timeout,
                 connect_timeout: float = DEFAULTS.connect_timeout, max_wait: float = DEFAULTS.max_wait,
                 retry: RetryPolicy | None = None):
        super().__init__()
        if timeout <= 0 or connect_timeout <= 0 or max_wait < 0:
            raise ValueError("teacher timeouts must be > 0 seconds and --teacher-max-wait >= 0")
        self.wire_dtype, self.timeout, self.connect_timeout = wire_dtype, timeout, connect_timeout
        self.wire_itemsize = codec.ITEMSIZE[codec.dtype_code(wire_dtype)]
        self._closed = threading.Event()
        self.retry_loop = RetryLoop(retry or RetryPolicy(max_wait=max_wait), self._classify, self._closed)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def retry(self) -> RetryPolicy:
        """How calls are retried; a new policy applies to calls made from then on."""
        return self.retry_loop.policy

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self.retry_loop.policy = policy

    @property
    def retries(self) -> int:
        """Calls retried in all, for logs and tests."""
        return self.retry_loop.retries

    @classmethod
    def from_url(cls, url: str, *, token_file: str | None = None, device: str | None = None,
                 **options) -> RemoteTeacherClient:
        """The token comes from ``token_file``, never the URL (which is logged and written to summary.json).
        ``device``, where this process computes, is no concern of a teacher served elsewhere."""
        return cls(**cls.parse_url(url), token=read_token(token_file) if token_file else None, **options)

    @classmethod
    @abstractmethod
    def parse_url(cls, url: str) -> dict:
        """Where ``url`` points, as the constructor's arguments; a one-line ValueError where it points nowhere."""

    def channel_options(self) -> list[tuple[str, int]]:
        """Replies can carry feature maps: the server's own size limit is the only one. Reconnect attempts
        stay frequent, so a restarted teacher is found within seconds."""
        return [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
                ("grpc.initial_reconnect_backoff_ms", int(self.retry.initial_backoff * 1000)),
                ("grpc.min_reconnect_backoff_ms", int(self.retry.initial_backoff * 1000)),
                ("grpc.max_reconnect_backoff_ms", int(self.retry.max_backoff * 1000))]

    @cached_property
    def info(self) -> TeacherInfo:
        return self._describe()

    def describe(self) -> TeacherInfo:
        """Asked of the teacher once (every chunk of every batch needs its max batch), then kept."""
        return self.info

    @abstractmethod
    def _describe(self) -> TeacherInfo: ...

    # --- asking -------------------------------------------------------------
    def submit(self, images: torch.Tensor, outputs=(LOGITS,), views=None, verify: bool = False) -> Future:
        """Chunks within the server's max batch and message limit, up to ``max_in_flight`` on the wire at once."""
        if self.takes_recipes:
            check_recipes(images, views)
        info = self.describe()
        per_image = Views.COLUMNS * 8 if self.takes_recipes else math.prod(info.input_shape) * self.wire_itemsize
        size = chunk_rows(info, list(outputs), per_image, REPLY_ITEMSIZE)
        return ask_in_chunks(self._executor(), partial(self._ask, verify=verify), images, list(outputs), size,
                             TeacherFuture(lambda: self.counters), views=views if self.takes_recipes else None,
                             dropped=lambda: TeacherUnavailable(f"the client of the teacher at {self.url} was "
                                                                "closed before the answer came"))

    def _ask(self, chunk: torch.Tensor, outputs: list[str], views: Views | None,
             verify: bool = False) -> dict[str, torch.Tensor]:
        result, sent, received = (self._infer(chunk, outputs, verify) if views is None
                                  else self._infer_views(views, outputs, verify))
        self.counters.add_answer(chunk.shape[0], sent, received, verify)  # once, when the answer is here
        return result

    @abstractmethod
    def _infer(self, images: torch.Tensor, outputs: list[str],
               verify: bool = False) -> tuple[dict[str, torch.Tensor], int, int]:
        """(outputs, bytes sent, bytes received) for one chunk within the max batch; on a worker thread.
        ``verify``: the chunk re-asks about stored answers, to check them (a server that can counts it apart)."""

    def _infer_views(self, views: Views, outputs: list[str],
                     verify: bool = False) -> tuple[dict[str, torch.Tensor], int, int]:
        """``_infer`` for a chunk sent as its view recipes; a kind that ``takes_recipes`` implements it."""
        raise NotImplementedError(f"{type(self).__name__} sends pixels only")

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError(f"the client of the teacher at {self.url} is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="teacher-call")
            return self._pool

    # --- waiting out a teacher that is away ----------------------------------
    def _classify(self, error: Exception) -> Failure | None:
        """What ``error``, raised by a call to the teacher, means; None: not a call error (raised as is).

        This default knows gRPC: ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED`` are retried, other codes final.
        """
        if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)):
            return Failure(error.code() in RETRYABLE, error.code(), error.details() or "")
        return None

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried while the teacher is away (``RetryLoop.run``)."""
        return self.retry_loop.run(self.url, what, call)

    # --- the server's own count ---------------------------------------------
    def server_stats(self) -> ServerStats:
        stats, restart = self._counts()
        return dataclasses.replace(stats, source=f"{stats.source} ({restart})") if restart else stats

    @abstractmethod
    def _counts(self) -> tuple[ServerStats, str | None]:
        """The server's counts and, where the server may have restarted since the previous read, why:
        the caveat ``server_stats`` adds to their ``source``."""

    def close(self) -> None:
        """Calls waiting to retry give up (``TeacherUnavailable``), chunks not yet sent are dropped."""
        self._closed.set()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
