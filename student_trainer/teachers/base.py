"""What every teacher client offers the training loop: one contract for every kind of teacher.

``submit(images)`` returns a ``concurrent.futures.Future`` of the outputs;
``infer(images)`` is ``submit(images).result()``. A batch larger than the
server's max batch goes as chunks, at most ``max_in_flight`` of them on the wire
at once, reassembled in order.

Remote kinds (``grpc://``, ``grpcs://``, ``triton://``) share one retry loop,
``TeacherClient._retrying``: every call has a deadline; a failure that means
"the teacher is not there right now" (gRPC ``UNAVAILABLE`` / ``DEADLINE_EXCEEDED``,
a refused connection, a model that is being reloaded: each kind says which in
``_classify``) is retried with exponential backoff and jitter until
``--teacher-max-wait`` seconds have passed since the call began, then raises
``TeacherUnavailable`` in one line. Any other error from the teacher is final:
``TeacherRefused`` at once, in one line. The same request is resent on a retry,
and images are counted once, when their answer arrives.
"""
from __future__ import annotations

import logging
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, NamedTuple, TypeVar

import grpc
import torch

from common.views import Views
from student_trainer.teachers.options import DEFAULTS

log = logging.getLogger("student_trainer.teacher")
T = TypeVar("T")
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class TeacherUnavailable(ConnectionError):
    """The teacher could not be reached (within the total wait, where the client retries).

    The trainer catches it to save its progress before it stops.
    """


class TeacherRefused(grpc.RpcError):
    """The teacher answered a call with a final error (bad request, no access, unknown model): not retried.

    A ``grpc.RpcError`` with ``code()`` and ``details()`` whichever kind of teacher
    refused, and one line as text.
    """

    def __init__(self, url: str, what: str, code: grpc.StatusCode | None, details: str):
        self.url, self.what = url, what
        self._code = code or grpc.StatusCode.UNKNOWN
        self.full_details = details
        self._details = squeeze(details)
        super().__init__(f"teacher at {url} refused {what}: {self._code.name}: {self._details}")

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class Failure(NamedTuple):
    """What a client kind makes of an exception from one of its calls (see ``_classify``)."""
    retryable: bool
    code: grpc.StatusCode | None
    details: str


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt): \S")


def squeeze(text: str) -> str:
    """A message as one line: its first line and, where there are more, the last that names an
    exception (what a server-side traceback says went wrong), else the last."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    named = [line for line in lines[1:] if _EXCEPTION_LINE.match(line)]
    return f"{lines[0]} ... {(named or lines)[-1]}"


def one_line(error: BaseException) -> str:
    return squeeze(str(error)) or type(error).__name__


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


@dataclass(frozen=True)
class ServedDataSet:
    """The data set a teacher server renders view recipes from (``DescribeResponse.data``)."""
    name: str
    size: int
    fingerprint: str


@dataclass
class TeacherInfo:
    model_name: str
    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    feature_names: list[str]
    flops_per_image: float
    max_batch_size: int
    # logits and each feature -> per-image shape in full (no reduction; see common.reductions for
    # the shape after one); empty where the teacher does not say.
    output_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # reductions the teacher applies on request (keys NAME.REDUCTION); empty: full outputs only.
    reductions: list[str] = field(default_factory=list)
    # the data set it was trained on (a --dataset name), so the trainer can default to it; None: unknown.
    dataset: str | None = None
    # sha256 of its weights (``common.teacher_model.weights_digest``); None: the teacher does not say.
    weights_sha256: str | None = None
    # the training split it renders view recipes from (``--send recipes``); None: it takes pixels only.
    data: ServedDataSet | None = None


@dataclass
class ClientCounters:
    """What the student side sent and waited for; compared with the server's own count.

    ``requests``, ``images`` and the bytes count each answered request once (a
    retried call counts when its answer arrives; a call never answered counts
    nothing). ``wait_seconds`` is the time callers spent blocked for answers
    (in ``infer`` and ``Future.result``): with calls in flight while the caller
    works, it is less than the teacher's service time. Thread-safe.
    """
    requests: int = 0
    images: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    wait_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def add_answer(self, images: int, sent: int, received: int) -> None:
        with self._lock:
            self.requests += 1
            self.images += images
            self.bytes_sent += sent
            self.bytes_received += received

    def add_wait(self, seconds: float) -> None:
        with self._lock:
            self.wait_seconds += seconds

    def as_dict(self) -> dict:
        with self._lock:
            return {"requests": self.requests, "images": self.images, "bytes_sent": self.bytes_sent,
                    "bytes_received": self.bytes_received, "wait_seconds": self.wait_seconds}


@dataclass
class ServerStats:
    """The server's own counters, as its statistics endpoint reports them.

    ``images`` None: they could not be read; ``source`` then says why ("unavailable: ...").
    """
    images: int | None
    requests: int | None
    bytes_in: int | None = None    # None: this server does not count bytes (Triton)
    bytes_out: int | None = None
    forward_seconds: float | None = 0.0
    source: str = ""
    per_client: bool = False       # True: the counts of this client's id alone (our gRPC server)
    # Teacher replicas (grpc://h1:p1,h2:p2): each one's counts ({"images", "requests", "bytes_in",
    # "bytes_out"}, or None where it could not be read), which the totals above add up.
    replicas: dict[str, dict | None] | None = None

    @classmethod
    def unavailable(cls, reason: str) -> "ServerStats":
        return cls(images=None, requests=None, forward_seconds=None, source=f"unavailable: {reason}")

    @property
    def available(self) -> bool:
        return self.images is not None


class TeacherFuture(Future):
    """A teacher's answer on its way. The time a caller spends blocked in ``result`` is added to
    the client's ``counters.wait_seconds``. On the wire at once, so it cannot be cancelled."""

    def __init__(self, counters: Callable[[], ClientCounters]):
        super().__init__()
        self._counters = counters
        self.set_running_or_notify_cancel()

    def result(self, timeout=None):
        start = time.perf_counter()
        try:
            return super().result(timeout)
        finally:
            self._counters().add_wait(time.perf_counter() - start)


class TeacherClient(ABC):
    """A teacher somewhere: ``submit`` / ``infer`` turn an image batch into logits (and features).

    A kind implements ``from_url``, ``describe``, ``_infer`` (one chunk within the
    max batch; a remote kind sends it through ``_retrying``) and ``server_stats``,
    and a remote kind says in ``_classify`` which of its errors are worth a retry.
    """
    max_in_flight = 1  # chunks on the wire at once; 1 for an in-process model (a remote kind allows more)
    # Which of the trainer's teacher flags (options.FLAGS) this kind uses; ``connect`` refuses the others.
    uses: frozenset[str] = frozenset()
    # "recipes": a batch that comes with its views travels as them (``_infer_views``), not as pixels.
    send: str = "pixels"

    def __init__(self, retry: RetryPolicy | None = None):
        self.url = type(self).__name__  # where the teacher is, for messages: never a secret
        self.counters = ClientCounters()
        self.retry = retry or RetryPolicy()
        self.retries = 0  # retried calls in all, for logs and tests
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._stats_warned = False

    @property
    def takes_recipes(self) -> bool:
        """True: a batch that comes with its views travels as them, rendered by the teacher."""
        return self.send == "recipes"

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, **options) -> TeacherClient:
        """The client of the teacher at ``url``, a URL of this kind; ``options`` are ``connect``'s."""

    @abstractmethod
    def describe(self) -> TeacherInfo: ...

    @abstractmethod
    def _infer(self, images: torch.Tensor, outputs: list[str]) -> tuple[dict[str, torch.Tensor], int, int]:
        """Return (outputs, bytes sent, bytes received) for one batch within the max batch.

        Runs on a worker thread; a remote kind sends one request through ``_retrying``.
        """

    def _infer_views(self, views: Views, outputs: list[str]) -> tuple[dict[str, torch.Tensor], int, int]:
        """``_infer`` for a chunk sent as its view recipes; a kind that takes ``--send`` implements it."""
        raise NotImplementedError(f"{type(self).__name__} sends pixels only")

    @abstractmethod
    def server_stats(self) -> ServerStats: ...

    # --- one retry loop for every remote kind ------------------------------
    def _classify(self, error: Exception) -> Failure | None:
        """What ``error``, raised by a call to the teacher, means; None: not a call error (raised as is).

        This default knows gRPC: ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED`` are retried, other codes final.
        """
        if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)):
            return Failure(error.code() in RETRYABLE, error.code(), error.details() or "")
        return None

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried with backoff and jitter while the teacher is away, up to ``retry.max_wait``.

        ``what`` names the call in messages. Raises ``TeacherUnavailable`` when the
        wait runs out and ``TeacherRefused`` at once on a final error, each one line.
        """
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                answer = call()
            except (TeacherUnavailable, TeacherRefused):
                raise
            except Exception as e:
                failure = self._classify(e)
                if failure is None:
                    raise
                if not failure.retryable:
                    raise TeacherRefused(self.url, what, failure.code, failure.details) from None
                last = f"{failure.code.name if failure.code else 'unreachable'}: {squeeze(failure.details)}"
                waited = time.monotonic() - start
                left = self.retry.max_wait - waited
                if left <= 0:
                    raise TeacherUnavailable(
                        f"teacher at {self.url} gave no answer to {what} for {waited:.0f} s (the limit, "
                        f"--teacher-max-wait, is {self.retry.max_wait:g} s); last error {last}") from None
                with self._lock:
                    delay = min(self.retry.backoff(attempt, self._rng), left)
                    self.retries += 1
                attempt += 1
                log.warning("teacher at %s did not answer %s (%s); retry %d in %.1f s, %.0f of %g s waited",
                            self.url, what, last, attempt, delay, waited, self.retry.max_wait)
                if self._closed.wait(delay):
                    raise TeacherUnavailable(f"the client of the teacher at {self.url} was closed while "
                                             f"{what} waited for it; last error {last}") from None
                continue
            if attempt:
                log.warning("teacher at %s answered %s again after %d retries (%.1f s)", self.url, what, attempt,
                            time.monotonic() - start)
            return answer

    # --- asking -------------------------------------------------------------
    def submit(self, images: torch.Tensor, outputs=("logits",), views=None) -> Future:
        """Ask the teacher about ``images``; returns at once a Future of {output: float32 CPU tensor}.

        A batch over the server's max batch goes as chunks, up to ``max_in_flight``
        at a time, reassembled in order. The future ends in the outputs, or in the
        first chunk's error (``TeacherUnavailable``, ``TeacherRefused``, ...).
        ``images`` must not change until the future is done. Callbacks added to the
        future run on a worker thread: they must not block there on another answer.
        ``views``: the rows as recipes (``common.views.Views``), sent instead of the
        pixels where this client sends recipes; such a client refuses a batch without them.
        """
        outputs = list(outputs)
        size = self.describe().max_batch_size
        chunks = torch.split(images.detach(), size)
        recipes = [None] * len(chunks)
        if self.send == "recipes":
            if views is None or len(views) != images.shape[0]:
                raise ValueError(f"--send recipes: a batch of {images.shape[0]} images came with "
                                 f"{'no' if views is None else len(views)} view recipes")
            recipes = [views.take(torch.arange(i, min(i + size, len(views)))) for i in range(0, len(views), size)]
        pool = self._executor()
        future = TeacherFuture(lambda: self.counters)
        parts: list[dict | None] = [None] * len(chunks)
        left = [len(chunks)]
        lock = threading.Lock()
        subs = [pool.submit(self._ask, chunk, outputs, part) for chunk, part in zip(chunks, recipes)]

        def chunk_done(i: int, sub: Future) -> None:
            error = (TeacherUnavailable(f"the client of the teacher at {self.url} was closed before the "
                                        f"answer came") if sub.cancelled() else sub.exception())
            with lock:
                if future.done():
                    return
                if error is None:
                    parts[i] = sub.result()
                    left[0] -= 1
                    if left[0] == 0:
                        future.set_result({o: torch.cat([p[o] for p in parts]) if len(parts) > 1 else parts[0][o]
                                           for o in outputs})
                    return
                future.set_exception(error)
            for other in subs:
                other.cancel()

        for i, sub in enumerate(subs):
            sub.add_done_callback(partial(chunk_done, i))
        return future

    def infer(self, images: torch.Tensor, outputs=("logits",)) -> dict[str, torch.Tensor]:
        """``submit(images, outputs).result()``: the outputs, float32 on the CPU."""
        return self.submit(images, outputs).result()

    def _ask(self, chunk: torch.Tensor, outputs: list[str], views: Views | None = None) -> dict[str, torch.Tensor]:
        result, sent, received = self._infer(chunk, outputs) if views is None else self._infer_views(views, outputs)
        self.counters.add_answer(chunk.shape[0], sent, received)  # once, when the answer is here
        return result

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError(f"the client of the teacher at {self.url} is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="teacher-call")
            return self._pool

    # --- the server's own count ---------------------------------------------
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

    def close(self) -> None:
        """Calls waiting to retry give up (``TeacherUnavailable``), chunks not yet sent are dropped."""
        self._closed.set()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
