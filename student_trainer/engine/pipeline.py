"""The steps of an epoch as an iterator: each drawn, its images chosen and sent before it is trained.

With ``--prefetch D`` the teacher answers about the next D batches while the
student trains on this one; their images were chosen (UNIX's uncertainty pass)
with weights up to D steps older. ``auto`` (the default) chooses ahead only where
that changes nothing (``PrefetchDepth``). The steps in flight (``StepsInFlight``) live
in the run state, so a checkpoint holds them; the loop lets each go
(``RunState.finish_step``) once it is trained. Never past the epoch's end or
``--max-steps``.
"""
from __future__ import annotations

from typing import Iterator

from student_trainer.distill import StepContext
from student_trainer.engine.run_state import RunState
from student_trainer.engine.steps_in_flight import SentStep


def epoch_steps(state: RunState) -> Iterator[tuple[SentStep, StepContext]]:
    """The epoch in progress from its saved position: (the oldest step in flight, where training stands)."""
    run, p = state.run, state.progress
    # Batches already in flight (restored from a checkpoint) were drawn: the data order goes on after them.
    run.sampler.set_epoch(p.epoch, start=(p.step_in_epoch + len(state.in_flight)) * run.config.batch_size)
    state.in_flight.start_epoch(iter(run.train_loader))
    while state.work.steps < run.total_steps:
        state.in_flight.fill(run.total_steps - state.work.steps)
        if state.in_flight.oldest is None:
            return
        yield state.in_flight.oldest, StepContext(epoch=p.epoch, epochs=run.config.schedule.epochs, step=state.work.steps,
                                                  total_steps=run.total_steps)

