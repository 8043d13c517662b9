"""Where a run reports: ``metrics.jsonl`` (a line an epoch), TensorBoard, the progress bar, ``--record-indices``.

Figures are summed over the ranks (every rank takes part in those collectives);
rank 0 alone writes. A resumed run first drops the lines a killed life wrote
after its last checkpoint, so the files read as one uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import time

from tqdm import tqdm

from student_trainer.engine.accounting import costs, summed_client, summed_work
from student_trainer.engine.distributed import mean_over_ranks

log = logging.getLogger("student_trainer")


class RunLog:
    def __init__(self, state):
        self.state, self.run = state, state.run
        run, settings = self.run, self.run.config.run
        self.metrics = run.out / "metrics.jsonl"
        self.indices = run.out / f"indices.rank{run.dist.rank}.jsonl"
        if run.dist.is_main:
            self._keep_saved_epochs() if settings.resume else self.metrics.write_text("")
        if settings.record_indices and not settings.resume:
            self.indices.write_text("")
        self.writer = None
        if settings.tensorboard and run.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run.out / "tensorboard"), purge_step=state.work.steps or None)

    def _keep_saved_epochs(self) -> None:
        """Drop lines a killed life wrote after its last checkpoint, and partial-epoch lines."""
        lines = self.metrics.read_text().splitlines() if self.metrics.exists() else []
        records = [json.loads(line) for line in lines if line.strip()]
        done = self.state.progress.epochs_done
        kept = [json.dumps(r) for r in records if r["epoch"] <= done and not r.get("partial")]
        self.metrics.write_text("".join(line + "\n" for line in kept))

    # --- steps ----------------------------------------------------------------------------------------
    def start_epoch(self) -> None:
        run, p = self.run, self.state.progress
        self.sums, self.window, self.steps, self.window_steps = {}, {}, 0, 0
        self.start, self.images_at_start = time.perf_counter(), self.state.work.student_images
        self.bar = tqdm(total=run.steps_per_epoch, initial=p.step_in_epoch, desc=f"epoch {p.epoch}", leave=False,
                        disable=True if not run.config.run.progress or not run.dist.is_main else None, dynamic_ncols=True)

    def step(self, step, out) -> None:
        """After a trained step: its loss parts, and whatever is due every --log-every steps."""
        settings, work = self.run.config.run, self.state.work
        if settings.record_indices:
            record = {"step": work.steps, "epoch": self.state.progress.epoch,
                      "indices": step.query.indices.tolist()}
            with self.indices.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self.steps += 1
        self.window_steps += 1
        for name, value in out.parts.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.window[name] = self.window.get(name, 0.0) + value
        if work.steps % settings.log_every == 0:
            self._tensorboard_steps()
        self.bar.update(1)
        if self.steps % 10 == 0:
            elapsed = time.perf_counter() - self.start
            self.bar.set_postfix(loss=f"{self.sums['loss'] / self.steps:.3f}",
                                 img_s=f"{(work.student_images - self.images_at_start) / max(elapsed, 1e-9):.0f}",
                                 teacher=f"{work.teacher_images / max(work.student_images, 1):.2f}")

    def end_epoch_steps(self) -> dict:
        """The epoch's mean loss parts and its step count."""
        self.bar.close()
        self._tensorboard_steps()
        return {name: value / max(self.steps, 1) for name, value in self.sums.items()} | {"steps": self.steps}

    def _tensorboard_steps(self) -> None:
        """The window's mean parts and the run's counts so far (every rank takes part; rank 0 writes)."""
        window, count = self.window, self.window_steps
        self.window, self.window_steps = {}, 0
        if not self.run.config.run.tensorboard or not count:
            return
        means = mean_over_ranks({name: value / count for name, value in window.items()})
        work, client = summed_work(self.state.work), summed_client(self.run.teacher_counters())
        if not self.writer:
            return
        step = work.steps
        for name, value in means.items():
            self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.add_scalar("train/lr", self.run.optimizer.param_groups[0]["lr"], step)
        self.writer.add_scalar("teacher/images", work.teacher_images, step)
        self.writer.add_scalar("teacher/query_ratio", work.teacher_images / max(work.student_images, 1), step)
        if client:
            for name in ("bytes_sent", "bytes_received", "wait_seconds"):
                self.writer.add_scalar(f"teacher/{name}", client[name], step)
        self.writer.add_scalar("compute/flops", costs(work, self.run.flops)[0], step)

    # --- epochs ---------------------------------------------------------------------------------------
    def epoch(self, parts: dict, epoch_seconds: float, complete: bool, evaluated: bool = True) -> None:
        """The epoch's line in metrics.jsonl (``partial`` when --max-steps or --budget ended it early; top-1
        null when --eval-every skipped its evaluation)."""
        run, p = self.run, self.state.progress
        parts = mean_over_ranks(parts)
        work, client = summed_work(self.state.work), summed_client(run.teacher_counters())
        cost, kd_cost = costs(work, run.flops)
        record = {"epoch": p.epoch, "top1": p.top1 if evaluated else None, "lr": run.optimizer.param_groups[0]["lr"], **parts,
                  **work.as_dict(), "compute_flops": cost, "kd_flops": kd_cost,
                  "epoch_seconds": epoch_seconds, **({} if complete else {"partial": True})}
        if client:
            record |= {"teacher_" + k: v for k, v in client.items()}
        if run.dist.is_main:
            with self.metrics.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer and evaluated:
            self.writer.add_scalar("test/top1", p.top1, p.epoch)
            self.writer.add_scalar("test/top1_by_teacher_images", p.top1, work.teacher_images)
            self.writer.flush()
        log.info("epoch %d/%d  loss %.4f  top-1 %s  teacher images %d of %d  (%.1f s)", p.epoch,
                 run.config.schedule.epochs, parts.get("loss", float("nan")), f"{p.top1:.2f}%" if evaluated else "not measured",
                 work.teacher_images,
                 work.student_images, epoch_seconds)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
