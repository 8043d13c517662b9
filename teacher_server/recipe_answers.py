"""The answer to a request of view recipes: rows the answer store keeps come from it, the others are
rendered from the server's split and forwarded, and their answers kept for next time.

A request whose rows are all kept runs no forward and renders nothing; the
answer is the same tensor, row for row, whichever way each row was answered. A
row that cannot be rendered (an image file that no longer reads, a box outside
its image) fails the request with INVALID_ARGUMENT, and nothing is stored.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import grpc
import torch

from teacher_server import recipes
from teacher_server.answers import StoredAnswers, assemble
from teacher_server.batcher import Answer
from teacher_server.checks import BadRequest, Checked


def answer_views(job: Checked, data: recipes.ServedData, answers: StoredAnswers | None,
                 forward: Callable[[torch.Tensor], Answer]) -> tuple[Answer, int, float]:
    """(the answer, rows answered from the store, seconds rendering) of a request of recipes.

    ``forward(images)`` runs the rendered rows through the teacher (the batcher);
    its errors pass through. ``answers`` None: no store, every row is forwarded.
    """
    n = len(job.views)
    found = (answers.look_up(job.views, job.outputs, job.render_dtype, job.out_dtype) if answers
             else [None] * n)
    missing = [i for i, f in enumerate(found) if f is None]
    if not missing:
        kept = assemble(found, [], {}, job.outputs)
        return Answer(kept, forward_seconds=0.0, share_seconds=0.0, queue_seconds=0.0, batch_images=0,
                      batch_requests=0), n, 0.0
    start = time.perf_counter()
    try:
        images = recipes.render(data, job.views, job.render_dtype, None if len(missing) == n else missing)
    except ValueError as e:  # a file that no longer reads, or a box outside its image: nothing is stored
        raise BadRequest(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    rendered = time.perf_counter() - start
    answer = forward(images)
    if answers is None:
        return answer, 0, rendered
    answers.keep(job.views, missing, answer.outputs, job.render_dtype, job.out_dtype)
    outputs = answer.outputs if len(missing) == n else assemble(found, missing, answer.outputs, job.outputs)
    return dataclasses.replace(answer, outputs=outputs), n - len(missing), rendered
