"""A batch larger than the teacher's max batch, asked as chunks and put back together in order.

The chunks go on a pool of threads all at once (the pool's size bounds how many
are on the wire); the answer is the chunks' outputs concatenated in batch
order, or the first chunk's error, at which the chunks not yet sent are
cancelled: a step needs every row, so one lost chunk loses the batch.
"""
from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from functools import partial
from typing import Callable

import torch

from common.views import Views

# Ask about one chunk: (its images, the outputs, its view recipes or None) -> {output: tensor}.
AskChunk = Callable[[torch.Tensor, list[str], Views | None], dict[str, torch.Tensor]]


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
