"""A batch larger than one request may carry, asked as chunks and put back together in order.

A chunk holds at most the teacher's max batch, and no more images than keep
the request and its reply within the teacher's message limit (``chunk_rows``,
the sum the server checks): at 224 px a reply with full feature maps passes
gRPC's 2 GiB long before the max batch. Each chunk is started as a call that
returns a future at once (no thread waits on it); a client's ``CallWindow``
bounds how many are on the wire at once, and starts the next waiting chunk as
one ends. The answer is the chunks' outputs concatenated in batch order, or
the first chunk's error, at which the chunks not yet sent are dropped: a step
needs every row, so one lost chunk loses the batch.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from functools import partial
from typing import Callable

import torch

from common.message_budget import bytes_per_image, images_that_fit
from common.views import Views
from student_trainer.teachers.types import TeacherInfo

# Start asking about one chunk: (its images, the outputs, its view recipes or None) -> a future of
# {output: tensor}, returned at once.
StartChunk = Callable[[torch.Tensor, list[str], Views | None], Future]


class CallWindow:
    """At most ``size`` calls on the wire at once; the others wait their turn, in order.

    ``run(start)`` returns at once a future of what ``start()``'s future ends in.
    ``start`` runs now if the window has room, else when a call ends (on the
    thread that ends it). A waiting call can be cancelled, one on the wire
    cannot; ``close`` cancels every waiting call and refuses new ones.
    """

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"a call window holds at least 1 call, got {size}")
        self.size = size
        self._running = 0
        self._waiting: deque[tuple[Callable[[], Future], Future]] = deque()
        self._lock = threading.Lock()
        self._closed = False

    def run(self, start: Callable[[], Future]) -> Future:
        out = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the call window is closed")
            now = self._running < self.size
            if now:
                self._running += 1
            else:
                self._waiting.append((start, out))
        if now:
            self._launch(start, out)
        return out

    def _launch(self, start: Callable[[], Future], out: Future) -> None:
        while out is not None:
            if out.set_running_or_notify_cancel():
                try:
                    call = start()
                except BaseException as e:  # a request that could not even be built or started
                    out.set_exception(e)
                else:
                    call.add_done_callback(lambda f, out=out: self._ended(f, out))
                    return
            start, out = self._next()  # cancelled while it waited, or failed at start: its slot goes on

    def _ended(self, call: Future, out: Future) -> None:
        try:
            out.set_result(call.result())
        except BaseException as e:
            out.set_exception(e)
        start, nxt = self._next()
        if nxt is not None:
            self._launch(start, nxt)

    def _next(self) -> tuple[Callable[[], Future] | None, Future | None]:
        """The next waiting call, which takes over the slot of the one that ended; else the slot is freed."""
        with self._lock:
            if self._waiting and not self._closed:
                return self._waiting.popleft()
            self._running -= 1
            return None, None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
        for _, out in waiting:
            out.cancel()


def chunk_rows(info: TeacherInfo, outputs: list[str], request_per_image: int, reply_itemsize: int) -> int:
    """The most images one request may carry: the teacher's max batch, and as many as keep a request of
    ``request_per_image`` bytes an image and its reply (``outputs`` in ``reply_itemsize``-byte numbers)
    within its message limit. ValueError, in one line, where not even one image fits."""
    if not info.max_message_bytes:
        return info.max_batch_size
    try:
        reply_per_image = bytes_per_image(info.output_shapes, outputs, reply_itemsize)
    except ValueError:  # a key the teacher does not offer: its server refuses it, saying what it offers
        reply_per_image = 0
    fit = images_that_fit(info.max_message_bytes, max(request_per_image, reply_per_image))
    if fit < 1:
        raise ValueError(f"one image with outputs {outputs} ({max(request_per_image, reply_per_image) / 1e6:.0f} MB) "
                         f"is over the teacher's message limit of {info.max_message_bytes / 1e6:.0f} MB: "
                         "ask for fewer or reduced outputs")
    return min(info.max_batch_size, fit)


def split(images: torch.Tensor, size: int, views: Views | None = None) -> list[tuple[torch.Tensor, Views | None]]:
    """``images`` in chunks of at most ``size`` rows, each with its rows of ``views`` (None without views)."""
    chunks = torch.split(images.detach(), size)
    if views is None:
        return [(chunk, None) for chunk in chunks]
    return [(chunk, views.take(torch.arange(start, min(start + size, len(views)))))
            for chunk, start in zip(chunks, range(0, len(views), size))]


def ask_in_chunks(window: CallWindow, start: StartChunk, images: torch.Tensor, outputs: list[str], size: int,
                  answer: Future, *, views: Views | None = None,
                  dropped: Callable[[], BaseException]) -> Future:
    """``answer``, which ends in the outputs of ``images`` asked ``size`` rows at a time through ``window``.

    ``dropped()`` is the error for a chunk the window cancelled (the client was
    closed) before the answer came.
    """
    chunks = split(images, size, views)
    parts: list[dict | None] = [None] * len(chunks)
    left = [len(chunks)]
    lock = threading.Lock()
    subs = [window.run(partial(start, chunk, outputs, part)) for chunk, part in chunks]

    def chunk_done(i: int, sub: Future) -> None:
        error = dropped() if sub.cancelled() else sub.exception()
        with lock:
            if answer.done():
                return
            if error is None:
                parts[i] = sub.result()
                left[0] -= 1
                if left[0] == 0:
                    answer.set_result({o: torch.cat([p[o] for p in parts]) if len(parts) > 1 else parts[0][o]
                                       for o in outputs})
                return
            answer.set_exception(error)
        for other in subs:
            other.cancel()

    for i, sub in enumerate(subs):
        sub.add_done_callback(partial(chunk_done, i))
    return answer
