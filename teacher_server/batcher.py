"""A dynamic batcher in the manner of Triton's: concurrent requests gathered into one forward.

Requests (already checked and decoded by the servicer) wait in one FIFO queue.
One worker thread takes the oldest and gathers the requests behind it, in
order, while they fit in ``max_batch`` images, waiting for more at most
``queue_delay`` seconds counted from the oldest request's arrival (so a request
that already waited while the previous batch ran does not wait again). A delay
of 0 waits for nothing: whatever is queued when the worker is free runs. The
batch's images are concatenated, the union of the keys its requests asked for
is run once, and each request's future gets its own rows of its own keys
(``teacher_server.gather``, shared with the Triton backend).

The worker is the only caller of the model's forward, so the model needs no
lock of its own for the server (``TeacherModel``'s lock stays uncontended here).

A failed forward fails only the futures of that batch (``ModelError``). A
request whose caller has gone (``alive()`` false) when its batch is gathered is
dropped from it (``Cancelled``) and costs the model nothing. ``close`` stops new
requests, lets the running batch finish and fails whatever is still queued
with ``BatcherClosed``; it never waits for a model that does not return.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from teacher_server.gather import gather, split

log = logging.getLogger("teacher_server")

Forward = Callable[[torch.Tensor, Sequence[str]], "tuple[dict[str, torch.Tensor], float]"]


class BatcherClosed(RuntimeError):
    """The batcher was closed (the server is stopping) before the request ran."""


class Cancelled(RuntimeError):
    """The caller left before the request's batch was gathered; it never ran."""


class ModelError(RuntimeError):
    """The forward of the batch this request was in raised; ``__cause__`` is what it raised."""


@dataclass(frozen=True)
class Answer:
    """What a request's future ends in."""
    outputs: dict[str, torch.Tensor]   # its own keys, its own rows (views into the batch's result)
    forward_seconds: float             # the model's forward of the whole batch (CUDA-synchronised)
    share_seconds: float               # this request's share of it: forward_seconds x its images / batch images
    queue_seconds: float               # from submit to its batch's forward starting
    batch_images: int
    batch_requests: int


@dataclass(frozen=True)
class BatchDone:
    """One forward, as ``on_batch`` hears of it."""
    images: int
    requests: int
    forward_seconds: float  # the model's own measure; 0 where it failed
    busy_seconds: float     # wall seconds the worker spent in the forward call, failed or not
    failed: bool


@dataclass
class _Item:
    images: torch.Tensor
    keys: list[str]
    alive: Callable[[], bool] | None
    tag: str
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)

    @property
    def n(self) -> int:
        return self.images.shape[0]


class Batcher:
    def __init__(self, forward: Forward, *, max_batch: int, queue_delay: float,
                 on_batch: Callable[[BatchDone], None] | None = None, name: str = "teacher-batcher"):
        if max_batch < 1:
            raise ValueError(f"max batch must be at least 1, got {max_batch}")
        if queue_delay < 0:
            raise ValueError(f"queue delay must be >= 0 seconds, got {queue_delay}")
        self.forward = forward
        self.max_batch = max_batch
        self.queue_delay = queue_delay
        self.on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()  # guards _queue and _closed; the worker sleeps on it
        self._closed = False
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    def submit(self, images: torch.Tensor, keys: Sequence[str], *, alive: Callable[[], bool] | None = None,
               tag: str = "") -> Future:
        """Queue one request (1 to ``max_batch`` images); the future ends in an ``Answer`` or an error."""
        n = images.shape[0]
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"a request holds 1 to {self.max_batch} images, got {n}")
        item = _Item(images, list(keys), alive, tag)
        item.future.set_running_or_notify_cancel()
        with self._cond:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            self._queue.append(item)
            self._cond.notify()
        return item.future

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """No new requests; the running batch finishes; queued requests fail with ``BatcherClosed``.

        Waits up to ``timeout`` seconds (None: as long as it takes) for the running forward.
        """
        with self._cond:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for item in left:
            item.future.set_exception(BatcherClosed("the server stopped before this request ran"))
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- the worker ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            if batch:
                self._run_batch(batch)

    def _take_live(self) -> _Item | None:
        """Pop the oldest queued request whose caller is still there (under ``_cond``); None if none is."""
        while self._queue:
            item = self._queue[0]
            if item.alive is not None and not item.alive():
                self._queue.popleft()
                item.future.set_exception(Cancelled("the caller left before the request ran"))
                continue
            return item
        return None

    def _gather(self) -> list[_Item] | None:
        """The next batch, in arrival order; None once closed. Holds ``_cond`` only while it looks or sleeps."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                first = self._take_live()
                if first is not None:
                    break
                self._cond.wait()
            self._queue.popleft()
            batch, images = [first], first.n
            deadline = first.arrived + self.queue_delay
            while images < self.max_batch and not self._closed:
                nxt = self._take_live()
                if nxt is not None:
                    if images + nxt.n > self.max_batch:
                        break  # first come, first served: the batch runs without it, it leads the next
                    self._queue.popleft()
                    batch.append(nxt)
                    images += nxt.n
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return batch

    def _run_batch(self, batch: list[_Item]) -> None:
        images, keys = gather([item.images for item in batch], [item.keys for item in batch])
        n = images.shape[0]
        started = time.monotonic()
        try:
            result, seconds = self.forward(images, keys)
        except BaseException as e:  # noqa: BLE001 - whatever it was, it fails this batch only
            busy = time.monotonic() - started
            log.error("forward of a batch of %d images (%d requests: %s) failed", n, len(batch),
                      ", ".join(repr(item.tag) for item in batch[:8]) + (" ..." if len(batch) > 8 else ""),
                      exc_info=True)
            self._notify(BatchDone(n, len(batch), 0.0, busy, failed=True))
            for item in batch:
                error = ModelError(f"{type(e).__name__}: {e}")
                error.__cause__ = e
                item.future.set_exception(error)
            return
        busy = time.monotonic() - started
        self._notify(BatchDone(n, len(batch), seconds, busy, failed=False))
        answers = split(result, [item.n for item in batch], [item.keys for item in batch])
        for item, outputs in zip(batch, answers):
            item.future.set_result(Answer(
                outputs=outputs, forward_seconds=seconds, share_seconds=seconds * item.n / n,
                queue_seconds=started - item.arrived, batch_images=n, batch_requests=len(batch)))

    def _notify(self, done: BatchDone) -> None:
        if self.on_batch is None:
            return
        try:
            self.on_batch(done)
        except Exception:  # counting must never stop the worker
            log.exception("counting a batch failed")
