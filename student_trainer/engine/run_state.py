"""Where a run stands and everything it must save to go on bit-identically after a stop.

``RunState`` holds the progress, the work counted, the steps in flight
(``--prefetch``, a ``StepsInFlight``) and the server's counts at the start; ``state_dict`` is the
whole checkpoint (weights, optimiser, schedule, RNGs, the distiller's state),
``load_state_dict`` restores this process's part of one. ``last.pt`` is written
atomically at every epoch end and every ``--checkpoint-every`` steps.

Under torchrun a checkpoint holds what the ranks share once and what differs
per rank (``PER_RANK``) as a list indexed by rank; with one process the
per-rank entries sit at the top level, in the format they always had.
"""
from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, plain, save_checkpoint
from student_trainer.engine.accounting import WorkCounters
from student_trainer.engine.distributed import DistInfo, gather_objects, save_on_master
from student_trainer.engine.steps_in_flight import SentStep, StepsInFlight
from student_trainer.teachers import ClientCounters, ServerStats, TeacherUnavailable

log = logging.getLogger("student_trainer")

# Checkpoint entries that differ between ranks: each rank saves and restores its own.
PER_RANK = ("distiller", "rng", "inflight", "counters", "client_counters", "server_start", "timing")


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint."""
    epoch: int = 1              # the epoch in progress (1-based)
    step_in_epoch: int = 0      # its batches already trained
    epochs_done: int = 0
    top1: float = 0.0
    best_top1: float = -1.0
    wall_seconds: float = 0.0   # spent by earlier lives of a resumed run


def rng_state() -> dict:
    """The global RNGs in plain types (a tensor, ints, lists, a str): what a weights-only load accepts."""
    numpy = np.random.get_state(legacy=False)  # {'bit_generator', 'state': {'key': uint32 array, 'pos'}, ...}
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"bit_generator": str(numpy["bit_generator"]),
                      "state": {"key": [int(k) for k in numpy["state"]["key"]], "pos": int(numpy["state"]["pos"])},
                      "has_gauss": int(numpy["has_gauss"]), "gauss": float(numpy["gauss"])},
            "python": [int(version), [int(i) for i in internal], gauss_next]}


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state()`` exactly."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state({**numpy, "state": {"key": np.asarray(numpy["state"]["key"], dtype=np.uint32),
                                            "pos": numpy["state"]["pos"]}})
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


class RunState:
    """The run's progress and counts, its steps in flight, and its checkpoint (``state_dict``)."""

    def __init__(self, run):
        self.run = run
        self.progress = Progress()
        self.work = WorkCounters()
        prefetch = run.config.teacher.prefetch
        if prefetch is None and (run.config.teacher.serial or not run.distiller.keys):
            prefetch = 0  # auto: nothing to hide (no teacher), or the user asked for no overlap
        self.in_flight = StepsInFlight(run.distiller, prefetch, run.device, run.timer)
        self.server_start = run.teacher.try_server_stats() if run.teacher else None  # this rank's client's
        self._earlier_lives, self._life_start = 0.0, time.perf_counter()

    def done(self) -> bool:
        return self.progress.epoch > self.run.config.schedule.epochs or self.work.steps >= self.run.total_steps

    def draw_ahead(self) -> None:
        """Draw the next step's batch now (while the teacher answers this one), if there is a next step."""
        self.in_flight.draw_ahead(self.run.total_steps - self.work.steps)

    def finish_step(self, step: SentStep, out) -> None:
        """``step``, the oldest in flight, is trained: count it and let it go."""
        self.in_flight.release(step)
        self.work.add(step.batch_images, out)
        self.progress.step_in_epoch += 1

    def epochs_trained(self) -> float:
        return self.progress.epochs_done + self.progress.step_in_epoch / max(self.run.steps_per_epoch, 1)

    def wall(self) -> float:
        """Wall seconds of the whole run: earlier lives (if resumed) plus this one."""
        return self._earlier_lives + time.perf_counter() - self._life_start

    # --- the checkpoint -------------------------------------------------------------------------------
    def rank_state(self) -> dict:
        """What differs between ranks (``PER_RANK``): each rank's own, restored by it on resume."""
        run = self.run
        return {"distiller": run.distiller.training_state(), "rng": rng_state(),
                "inflight": self.in_flight.state(),
                "counters": self.work.as_dict(), "timing": run.timer.as_dict(),
                "client_counters": run.teacher.counters.as_dict() if run.teacher else None,
                "server_start": asdict(self.server_start) if self.server_start else None}

    def state_dict(self) -> dict:
        """The run's checkpoint: what the ranks share once, and each rank's own (every rank must call it)."""
        run, config, p = self.run, self.run.config, self.progress
        meta = {"dataset": run.spec.name, "method": config.method.label, "seed": config.run.seed,
                "teacher": run.teacher.describe().model_name if run.teacher else None,
                "epoch": p.epochs_done, "steps": self.work.steps, "top1": p.top1,
                "mean": list(run.spec.mean), "std": list(run.spec.std),
                **({"classes": list(run.spec.classes)} if run.spec.classes else {})}
        return make_checkpoint(
            run.student, arch=config.schedule.arch, num_classes=run.spec.num_classes, input_shape=run.spec.input_shape,
            meta=meta, optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
            progress=asdict(p), **rank_entries(gather_objects(self.rank_state())),
            run_flags={k: plain(v) for k, v in config.flags.items() if k not in ("resume", "overwrite")})

    def load_state_dict(self, ckpt: dict, path) -> None:
        """Restore this rank's run from ``ckpt`` (read from ``path``, named in messages)."""
        run = self.run
        if "progress" not in ckpt:
            raise CheckpointError(f"{path} holds weights only, no training state to resume from")
        if ckpt["arch"] != run.config.schedule.arch:
            raise CheckpointError(f"{path} is a {ckpt['arch']} run, but --arch is {run.config.schedule.arch}")
        own = own_entries(ckpt, run.dist, path)  # this rank's entries; another world size is refused
        run.student.load_state_dict(ckpt["state_dict"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.distiller.load_training_state(own["distiller"])
        self.progress = Progress(**ckpt["progress"])
        self._earlier_lives = self.progress.wall_seconds
        self.work = WorkCounters(**own["counters"])
        run.timer.load(own["timing"])
        if run.teacher and own.get("client_counters"):
            run.teacher.counters = ClientCounters(**own["client_counters"])
        if own.get("server_start"):
            self.server_start = ServerStats(**own["server_start"])
        set_rng_state(own["rng"])
        self.in_flight.load(own.get("inflight") or [], path)

    def save(self, *, best: bool = False) -> None:
        """Every rank calls it (it gathers their states); rank 0 writes ``last.pt`` (and ``best.pt``)."""
        with self.run.timer.phase("checkpoint"):
            # Let the steps in flight settle (answered or failed), so the saved counters and the saved
            # answers agree: each answer is in the checkpoint exactly when it was counted.
            self.in_flight.settle()
            self.progress.wall_seconds = self.wall()
            self.run.sync_buffers()
            ckpt = self.state_dict()
            save_on_master(save_checkpoint, ckpt, self.run.out / "last.pt")
            if best:
                save_on_master(save_checkpoint, ckpt, self.run.out / "best.pt")

    def resume(self, run_dir: str) -> None:
        path = Path(run_dir) / "last.pt" if Path(run_dir).is_dir() else Path(run_dir)
        # Weights-only (nothing in the file can run code); on the CPU, since RNG states must be CPU
        # tensors, and load_state_dict moves the rest to where the model and optimiser live.
        self.load_state_dict(load_checkpoint(path, map_location="cpu"), path)
        log.info("resumed %s at epoch %d, step %d of it (%d steps in all)", path, self.progress.epoch,
                 self.progress.step_in_epoch, self.work.steps)


@contextmanager
def saved_on_outage(state: RunState, step: SentStep):
    """Training ``step`` while its teacher may be gone: if it is, save the run as it stood before the
    step, then stop in one line.

    The steps in flight are saved with their images (and answers where they came), so a
    resumed run sends them again and trains exactly as an uninterrupted one. The student's
    forward runs before the wait, so its BatchNorm statistics are put back first; a step
    whose answer is already in cannot fail so, and keeps no copy of them.
    """
    distiller = state.run.distiller
    settled = step.answer is None or step.answered
    before = None if settled else distiller.student_buffers()
    try:
        yield
    except TeacherUnavailable as e:
        out = state.run.out
        if state.run.dist.enabled or before is None:  # other ranks are in a collective: no checkpoint together
            raise TeacherUnavailable(f"{e}; continue with --resume {out} from its last checkpoint") from None
        distiller.restore_student_buffers(before)
        state.save()
        raise TeacherUnavailable(f"{e}; progress saved, continue with --resume {out}") from None


def rank_entries(states: list[dict]) -> dict:
    """The per-rank entries of a checkpoint: as they always were with one rank; with several, a list
    ``ranks`` indexed by rank and, for people and tools reading the file, the run's summed ``counters``."""
    if len(states) == 1:
        return {**states[0], "world_size": 1}
    counters = [s["counters"] for s in states]
    summed = {k: (counters[0][k] if k == "steps" else sum(c[k] for c in counters)) for k in counters[0]}
    return {"world_size": len(states), "ranks": states, "counters": summed}


def own_entries(ckpt: dict, info: DistInfo, path) -> dict:
    """This rank's per-rank entries from a checkpoint; a run of another size is refused in one line."""
    saved = int(ckpt.get("world_size", 1))
    if saved != info.world_size:
        raise CheckpointError(f"{path} was saved by a run of {saved} process(es), and this run has "
                              f"{info.world_size}: resume it with torchrun --nproc_per_node={saved}"
                              f"{' (or without torchrun)' if saved == 1 else ''}")
    entries = ckpt if saved == 1 else ckpt["ranks"][info.rank]
    if "distiller" not in entries and "method_state" in entries:  # written before the entry was renamed
        entries = {**entries, "distiller": entries["method_state"]}
    return {k: entries.get(k) for k in PER_RANK}
