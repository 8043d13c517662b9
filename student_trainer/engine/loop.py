"""The training loop, read top to bottom: ``main`` builds, ``train`` runs the epochs, ``train_one_epoch``
trains, ``evaluate`` tests, ``finish`` reports.

The shape of torchvision's reference ``train.py``. What is not the loop lives
beside it: the pieces it trains with (``build.py``), the run's state and
checkpoints (``run_state.py``), the steps in flight (``pipeline.py``), what it
reports (``run_log.py``), one step's forward and losses (``distiller.py``).
Under ``torchrun`` every rank runs this same loop on its share of each global
batch, the student in DistributedDataParallel; rank 0 alone writes files.
"""
from __future__ import annotations

import json
import time

import torch

from student_trainer.engine.accounting import costs, summed_client, summed_server, summed_work
from common.devices import resolve_device
from student_trainer.engine.build import Run, build_run
from student_trainer.engine.distributed import all_reduce_sum, average_gradients, barrier, cleanup, init_distributed
from student_trainer.engine.pipeline import epoch_steps
from student_trainer.engine.run_log import RunLog
from student_trainer.engine.run_state import RunState, saved_on_outage
from student_trainer.engine.summary import build_summary, format_summary
from student_trainer.run_config import TrainConfig


def train_one_epoch(run: Run, state: RunState, log: RunLog) -> dict:
    """Train the epoch in progress from its saved position; return its mean loss parts."""
    run.model.train()
    log.start_epoch()
    for step, context in epoch_steps(state):
        with saved_on_outage(state, step):
            # the student's forward and the losses; the next batch is drawn while the teacher answers
            out = run.distiller.train_on(step, context, while_waiting=state.draw_ahead)
        with run.timer.phase("student"):
            run.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()  # through DDP: the student's gradients are averaged over the ranks here
            average_gradients(run.distiller.parameters())  # the loss's own modules' (no-op in one process)
            run.optimizer.step()
            run.scheduler.step()
        state.finish_step(step, out)
        log.step(step, out)
        if run.config.run.checkpoint_every and state.work.steps % run.config.run.checkpoint_every == 0:
            state.save()
    return log.end_epoch_steps()


@torch.inference_mode()
def evaluate(model, loader, device) -> float:
    """Top-1 accuracy in percent; under torchrun each rank's loader holds its part of the test set,
    and the counts are summed over the ranks."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        correct += (model(images).argmax(dim=1) == labels).sum().item()
        total += labels.shape[0]
    model.train(was_training)
    correct, total = all_reduce_sum(torch.tensor([correct, total], dtype=torch.int64)).tolist()
    return 100.0 * correct / max(total, 1)


def end_epoch(run: Run, state: RunState, log: RunLog, parts: dict, epoch_seconds: float) -> None:
    """Evaluate, log and save; a complete epoch also moves on to the next one.

    A run stopped by ``--max-steps`` or ``--budget`` mid-epoch is evaluated and saved
    where it stands (its metrics line marked ``partial``), so a resume finishes that epoch.
    """
    p = state.progress
    complete = p.step_in_epoch >= run.steps_per_epoch
    # --eval-every E: every E-th epoch, and always where the run stops (the summary's top-1 is the last one)
    evaluated = not complete or p.epoch % run.config.run.eval_every == 0 or state.work.steps >= run.total_steps \
        or p.epoch >= run.config.schedule.epochs
    if evaluated:
        with run.timer.phase("eval"):
            run.sync_buffers()
            p.top1 = evaluate(run.student, run.test_loader, run.device)
    if complete:
        p.epochs_done = p.epoch
    log.epoch(parts, epoch_seconds, complete, evaluated)
    best = evaluated and p.top1 > p.best_top1
    p.best_top1 = max(p.best_top1, p.top1) if evaluated else p.best_top1
    if complete:
        p.epoch, p.step_in_epoch = p.epoch + 1, 0
    state.save(best=best)


def train(run: Run, state: RunState, log: RunLog) -> dict:
    try:
        while not state.done():
            epoch_start = time.perf_counter()
            parts = train_one_epoch(run, state, log)
            if parts["steps"] or state.progress.step_in_epoch:
                end_epoch(run, state, log, parts, time.perf_counter() - epoch_start)
        server_end = run.teacher.try_server_stats() if run.teacher else None
    finally:
        if run.teacher:
            run.teacher.close()
        if run.store:
            run.store.close()  # its counters stay readable for the summary
        log.close()
    return finish(run, state, server_end)


def finish(run: Run, state: RunState, server_end) -> dict:
    """The run's summary, its counts summed over the ranks (on every rank); rank 0 writes and prints it."""
    work, client = summed_work(state.work), summed_client(run.teacher_counters())
    server_start, server_end = summed_server(state.server_start), summed_server(server_end)
    cost, kd_cost = costs(work, run.flops)
    p = state.progress
    summary = build_summary(config=run.config, spec=run.spec, work=work, top1=p.top1, best_top1=p.best_top1,
                            epochs=round(state.epochs_trained(), 4), teacher=run.teacher, client=client,
                            server_start=server_start, server_end=server_end, flops=run.flops, cost=cost,
                            kd_cost=kd_cost, wall_seconds=state.wall(), time_split=run.timer.as_dict(),
                            k=run.distiller.images_per_batch * run.dist.world_size,
                            processes=run.dist.world_size, store=run.store, policy=run.distiller.policy.report(),
                            prefetch=state.in_flight.depth)
    if run.dist.is_main:
        (run.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(format_summary(summary))
    barrier()  # every rank returns once the run's files are written
    return summary


def main(config: TrainConfig) -> dict:
    """Train one student as the config says; return (and write) the run's summary.

    Under ``torchrun`` (RANK and WORLD_SIZE set, more than one process) every rank runs this and
    they train the one student together.
    """
    dist = init_distributed(use_cuda=resolve_device(config.run.device).type == "cuda")
    try:
        built = build_run(config, dist)
        state = RunState(built)
        if config.run.resume:
            state.resume(config.run.resume)
        return train(built, state, RunLog(state))
    finally:
        cleanup()
