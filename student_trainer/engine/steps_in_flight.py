"""The steps in flight: chosen and sent to the teacher, not yet trained, in one place.

``--prefetch`` keeps steps ahead of the one being trained (``PrefetchDepth``: a fixed D, or
``auto``), so the teacher answers about the next batches while the student trains on this
one. ``StepsInFlight`` owns that queue: it fills it (draw a batch, let the policy choose,
send), hands out the oldest step and lets it go once trained, waits for its answers before a
checkpoint, writes it into the checkpoint (the images, and the answers where they came) and,
on resume, reads it back and asks again for the answers a stopped run never got. A resumed
run so trains on exactly the images and answers the uninterrupted one did.

Steps in flight never span an epoch's end (each epoch's queue drains), so no image is in two
of them. ``draw_ahead`` draws the next batch while a step waits for its teacher, whatever the
depth (UNIX's is 0): the data do not depend on the weights, so only the waiting changes.
"""
from __future__ import annotations

from collections import deque
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from common.checkpoint import CheckpointError
from common.views import Views
from student_trainer.engine.prefetch_depth import PrefetchDepth
from student_trainer.query import Query


def completed(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


@dataclass
class SentStep:
    """A step whose images are chosen and sent: the query, the images drawn for it, the teacher's answer."""
    query: Query
    batch_images: int                 # images drawn from the data set for this step (N)
    answer: Future | None = None      # None: the loss asks the teacher nothing
    # the teacher's fresh answers for the rows whose stored answer is checked (--verify-store); not saved with
    # the step: a resumed run does not check the steps it had in flight
    recheck: Future | None = None

    def wait(self) -> dict[str, torch.Tensor]:
        return self.answer.result() if self.answer is not None else {}

    @property
    def answered(self) -> bool:
        """The teacher's answer is here (not pending, not failed)."""
        return self.answer is not None and self.answer.done() and self.answer.exception() is None

    def to_state(self) -> dict:
        """Plain tensors and numbers (a weights-only checkpoint); the answer only if it arrived."""
        q = self.query
        return {"images": q.images.cpu(), "labels_a": q.labels_a.cpu(), "labels_b": q.labels_b.cpu(),
                "mix": q.mix.cpu(), "indices": q.indices.cpu(), "choosing_forward": q.choosing_forward,
                "parts": dict(q.parts), "batch_images": self.batch_images,
                "ask": None if q.ask is None else q.ask.cpu(), "known": {k: v.cpu() for k, v in q.known.items()},
                "answer": {k: v.cpu() for k, v in self.answer.result().items()} if self.answered else None,
                "views": None if q.views is None else torch.from_numpy(q.views.as_array())}

    @classmethod
    def from_state(cls, state: dict, device) -> "SentStep":
        q = Query(*(state[k].to(device) for k in ("images", "labels_a", "labels_b", "mix", "indices")),
                  choosing_forward=state["choosing_forward"], parts=dict(state["parts"]),
                  ask=None if state.get("ask") is None else state["ask"].to(device), known=dict(state.get("known", {})),
                  views=None if state.get("views") is None else Views.from_array(state["views"].numpy()))
        return cls(q, state["batch_images"], completed(state["answer"]) if state["answer"] is not None else None)


class StepsInFlight:
    """The queue of sent steps, oldest first: at most ``depth`` beyond the one being trained.

    ``distiller`` chooses and sends a step (``prepare``) and asks again for a lost answer (``resend``);
    ``prefetch``: ``--prefetch D``, or None for ``auto``.
    """

    def __init__(self, distiller, prefetch: int | None, device, timer):
        self.distiller, self.device, self.timer = distiller, device, timer
        self.depth = PrefetchDepth(prefetch, distiller.policy.reads_weights)
        self.queue: deque[SentStep] = deque()
        self.batches = iter(())
        self.held = None  # a batch drawn but not chosen yet

    def __len__(self) -> int:
        return len(self.queue)

    @property
    def oldest(self) -> SentStep | None:
        return self.queue[0] if self.queue else None

    def start_epoch(self, batches) -> None:
        """Draw from ``batches`` (the epoch's loader, from its saved position) from now on."""
        assert self.held is None, "a batch drawn in one epoch is chosen in it"
        self.batches = batches

    def _draw(self):
        with self.timer.phase("data"):
            batch = next(self.batches, None)
        if batch is None:
            return None
        if self.depth.auto and len(self.depth.step_times) == 0:
            self.depth.limit_memory(batch[0].numel() * batch[0].element_size())
        return batch

    def draw_ahead(self, steps_left: int) -> None:
        """Draw the next batch now (while a step waits for its teacher), to be chosen when its turn comes."""
        if self.held is None and len(self.queue) < steps_left:
            self.held = self._draw()

    def fill(self, steps_left: int) -> None:
        """Draw, choose and send until ``depth`` steps wait beyond the one to train now (never more than
        ``steps_left``, never past the loader's end)."""
        while len(self.queue) <= self.depth.depth() and len(self.queue) < steps_left:
            batch, self.held = (self.held if self.held is not None else self._draw()), None
            if batch is None:
                return
            images, labels, indices = (t.to(self.device, non_blocking=True) for t in batch[:3])
            views = Views.from_array(batch[3].numpy()) if len(batch) > 3 else None  # RenderedViews' recipes
            drawn = Views.from_array(batch[4].numpy()) if len(batch) > 4 else None  # where a lookahead changed some
            step = self.distiller.prepare(images, labels, indices, views, drawn)
            self.depth.sent(step.answer)
            self.queue.append(step)

    def release(self, step: SentStep) -> None:
        """``step``, the oldest, is trained: it leaves the queue."""
        assert self.queue and self.queue[0] is step
        self.queue.popleft()
        self.depth.trained()

    def settle(self) -> None:
        """Wait until every answer in flight is in or failed, so a checkpoint's counters and answers agree."""
        futures.wait([step.answer for step in self.queue if step.answer is not None])

    def state(self) -> list[dict]:
        return [step.to_state() for step in self.queue]

    def load(self, states: list[dict], path) -> None:
        """The steps a checkpoint held, their missing answers asked for again."""
        queue = deque(SentStep.from_state(state, self.device) for state in states)
        if len(queue) > self.depth.bound + 1:
            raise CheckpointError(f"{path} has {len(queue)} steps in flight; resume it with "
                                  f"--prefetch {len(queue) - 1} or more")
        self.queue = queue
        for step in self.queue:
            self.distiller.resend(step)
