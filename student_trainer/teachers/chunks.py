"""A batch larger than one request may carry, asked as chunks and put back together in order.

A chunk holds at most the teacher's max batch, and no more images than keep
the request and its reply within the teacher's message limit (``chunk_rows``,
the sum the server checks): at 224 px a reply with full feature maps passes
gRPC's 2 GiB long before the max batch. The chunks go on a pool of threads all
at once (the pool's size bounds how many are on the wire); the answer is the
chunks' outputs concatenated in batch order, or the first chunk's error, at
which the chunks not yet sent are cancelled: a step needs every row, so one
lost chunk loses the batch.
"""
from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from functools import partial
from typing import Callable

import torch

from common.message_budget import bytes_per_image, images_that_fit
from common.views import Views
from student_trainer.teachers.types import TeacherInfo

# Ask about one chunk: (its images, the outputs, its view recipes or None) -> {output: tensor}.
AskChunk = Callable[[torch.Tensor, list[str], Views | None], dict[str, torch.Tensor]]


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


def ask_in_chunks(pool: Executor, ask: AskChunk, images: torch.Tensor, outputs: list[str], size: int,
                  answer: Future, *, views: Views | None = None,
                  dropped: Callable[[], BaseException]) -> Future:
    """``answer``, which ends in the outputs of ``images`` asked ``size`` rows at a time on ``pool``.

    ``dropped()`` is the error for a chunk the pool cancelled (the client was
    closed) before the answer came.
    """
    chunks = split(images, size, views)
    parts: list[dict | None] = [None] * len(chunks)
    left = [len(chunks)]
    lock = threading.Lock()
    subs = [pool.submit(ask, chunk, outputs, part) for chunk, part in chunks]

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
