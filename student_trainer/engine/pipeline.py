"""The steps of an epoch as an iterator: each drawn, its images chosen and sent before it is trained.

With ``--prefetch D`` the teacher answers about the next D batches while the
student trains on this one; their images were chosen (UNIX's uncertainty pass)
with weights up to D steps older. The steps in flight live in the run state,
so a checkpoint holds them; the loop hands each back (``RunState.trained``)
once it is trained. Never past the epoch's end or ``--max-steps``.
"""
from __future__ import annotations

from typing import Iterator

from common.views import Views
from student_trainer.distill import StepContext
from student_trainer.engine.distiller import Prepared
from student_trainer.engine.run_state import RunState


def epoch_steps(state: RunState) -> Iterator[tuple[Prepared, StepContext]]:
    """The epoch in progress from its saved position: (the oldest step in flight, where training stands)."""
    run, p = state.run, state.progress
    # Batches already in flight (restored from a checkpoint) were drawn: the data order goes on after them.
    run.sampler.set_epoch(p.epoch, start=(p.step_in_epoch + len(state.inflight)) * run.args.batch_size)
    batches = iter(run.train_loader)
    while state.work.steps < run.total_steps:
        _fill(state, batches)
        if not state.inflight:
            return
        yield state.inflight[0], StepContext(epoch=p.epoch, epochs=run.args.epochs, step=state.work.steps,
                                             total_steps=run.total_steps)


def _fill(state: RunState, batches) -> None:
    """Draw, choose and send until ``--prefetch`` steps are in flight beyond the one to train now."""
    run = state.run
    left = run.total_steps - state.work.steps
    while len(state.inflight) <= run.args.prefetch and len(state.inflight) < left:
        with run.timer.phase("data"):
            batch = next(batches, None)
        if batch is None:
            return
        images, labels, indices = (t.to(run.device, non_blocking=True) for t in batch[:3])
        views = Views.from_array(batch[3].numpy()) if len(batch) > 3 else None  # RenderedViews' recipes
        state.inflight.append(run.distiller.prepare(images, labels, indices, views))
