"""What a teacher client says and counts: the teacher's description, its counts and the client's, an answer
on its way. Plain data, shared by every kind of client and by the trainer that reads them."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class ServedDataSet:
    """The data set a teacher server renders view recipes from (``DescribeResponse.data``)."""
    name: str
    size: int
    fingerprint: str
    files_fingerprint: str = ""   # a folder's: its content manifest's alone ("" for a split held in memory)
    view_settings: str = ""       # a folder's: how its views are made (JSON)


@dataclass(frozen=True)
class ServedManifest:
    """A served folder's content manifest, read a range at a time: ``range_digest(start, count)`` ->
    (hex digest, files) and ``entry(index)`` -> (relative path, bytes, hex sha256), as
    ``common.manifest.first_difference`` asks them."""
    range_digest: Callable[[int, int], tuple[str, int]]
    entry: Callable[[int], tuple[str, int, str]]


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
    # the largest request or reply it takes, in bytes (``common.message_budget``); None: no limit to mind.
    max_message_bytes: int | None = None


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
    verify_images: int = 0      # of ``images``: re-asks checking a stored answer (--verify-store)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def add_answer(self, images: int, sent: int, received: int, verify: bool = False) -> None:
        with self._lock:
            self.requests += 1
            self.images += images
            self.verify_images += images if verify else 0
            self.bytes_sent += sent
            self.bytes_received += received

    def add_wait(self, seconds: float) -> None:
        with self._lock:
            self.wait_seconds += seconds

    def as_dict(self) -> dict:
        with self._lock:
            return {"requests": self.requests, "images": self.images, "bytes_sent": self.bytes_sent,
                    "bytes_received": self.bytes_received, "wait_seconds": self.wait_seconds,
                    "verify_images": self.verify_images}


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
    verify_images: int | None = None  # of ``images``, re-asks checking a stored answer (None: not counted apart)
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
