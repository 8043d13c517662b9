"""The training loop: data, student, method, teacher; evaluation, checkpoints, resume, summary.

Read top to bottom like torchvision's reference ``train.py``: ``Trainer``
builds everything from the parsed flags, ``train`` runs the epochs,
``train_one_epoch`` and ``evaluate`` do the work, ``finish`` reports it.
Everything a run needs to continue bit-identically (weights, optimiser,
scheduler, method RNG, global RNG, position in the data order, counters) is
in ``last.pt``, written atomically every epoch and every ``--checkpoint-every``
steps.

Under ``torchrun`` every rank runs this same loop on its share of each global
batch, the student in DistributedDataParallel; what is particular to several
ranks (sharded flags, summed counters, per-rank checkpoint entries) is in
``ranks.py`` and the collectives in ``distributed.py``. Rank 0 alone writes
files.
"""
from __future__ import annotations

import json
import logging
from collections import deque
from concurrent import futures
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, plain, save_checkpoint
from common.data import build_dataset
from common.flops import backward_flops_per_image, forward_flops_per_image
from common.models import build_model
from student_trainer import ranks
from student_trainer.accounting import WorkCounters, compute_flops, kd_flops
from student_trainer.data_order import EpochSampler, SeededItems
from student_trainer.distill import loss_needs_teacher
from student_trainer.distill.base import StepContext
from student_trainer.distributed import (DistInfo, all_reduce_sum, average_gradients, barrier, broadcast_buffers,
                                         cleanup, ddp, gather_objects, init_distributed, rank_device, save_on_master)
from student_trainer.methods import Prepared, build_distiller
from student_trainer.summary import build_summary, format_summary
from student_trainer.teachers import ClientCounters, ServerStats, TeacherUnavailable, connect, teacher_options
from student_trainer.timing import PhaseTimer

log = logging.getLogger("student_trainer")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return dev


def check_teacher_fits(info, spec) -> None:
    """A teacher for another data set gives silent garbage: refuse it up front."""
    if tuple(info.input_shape) != tuple(spec.input_shape) or info.num_classes != spec.num_classes:
        raise ValueError(
            f"teacher {info.model_name} takes {'x'.join(map(str, info.input_shape))} images in "
            f"{info.num_classes} classes, but {spec.name} has {'x'.join(map(str, spec.input_shape))} "
            f"in {spec.num_classes}")


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


@torch.no_grad()
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


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint."""
    epoch: int = 1              # the epoch in progress (1-based)
    step_in_epoch: int = 0      # its batches already trained
    epochs_done: int = 0
    top1: float = 0.0
    best_top1: float = -1.0
    wall_seconds: float = 0.0   # spent by earlier lives of a resumed run


def scaled_steps(epochs: float, steps_per_epoch: int, budget: float = 1.0) -> int:
    """Step count of ``epochs`` epochs, scaled by ``--budget`` (the schedule keeps its shape)."""
    return round(epochs * steps_per_epoch * budget)


class Trainer:
    def __init__(self, args, dist: DistInfo = DistInfo()):
        self.args, self.dist = args, dist
        self.device = rank_device(resolve_device(args.device), dist)
        local = ranks.per_rank_flags(args, dist.world_size)  # N/P images a step, k/P for the teacher
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if args.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        seed_everything(args.seed)

        self.spec = spec = build_dataset(
            args.dataset, args.data_root, train_size=args.train_size, test_size=args.test_size,
            image_shape=args.image_shape, num_classes=args.num_classes, seed=args.data_seed,
            augment=not args.no_augment, download=args.download)
        self.student = build_model(args.arch, num_classes=spec.num_classes,
                                   in_channels=spec.input_shape[0]).to(self.device)
        self.timer = PhaseTimer(self.device)
        self.teacher = None
        if loss_needs_teacher(args.loss):
            if not args.teacher_url:
                raise ValueError(f"--loss {args.loss} needs --teacher-url "
                                 f"(grpc://HOST:PORT, grpcs://, triton://HOST:PORT/MODEL or local:PATH)")
            self.teacher = connect(args.teacher_url, wire_dtype=args.wire_dtype, timeout=args.teacher_timeout,
                                   connect_timeout=args.connect_timeout, device=str(self.device),
                                   **teacher_options(args) | ranks.client_id_option(args.teacher_url,
                                                                                    args.client_id, dist))
            check_teacher_fits(self.teacher.describe(), spec)
        self.method = build_distiller(local, self.student, self.teacher, input_shape=spec.input_shape,
                                      num_classes=spec.num_classes, dataset_size=len(spec.train),
                                      device=self.device, timer=self.timer)
        # Several ranks: the training forward goes through DDP, which averages the student's gradients in
        # backward; the loss's own modules (a regressor, ...) are averaged by hand after it (train_one_epoch).
        self.model = ddp(self.student, self.device)
        self.method.train_through(self.model)

        # The loss's own modules (regressors, embeddings) train beside the student.
        self.optimizer = torch.optim.SGD([*self.student.parameters(), *self.method.parameters()], lr=args.lr,
                                         momentum=args.momentum, weight_decay=args.weight_decay,
                                         nesterov=args.nesterov)
        self.sampler = EpochSampler(len(spec.train), args.seed, args.batch_size, dist.rank, dist.world_size)
        # Loader processes are started by a forkserver, not forked: by now the teacher client's gRPC
        # threads are running, and forking a process with live gRPC threads is unsafe.
        loader_opts = dict(num_workers=args.workers, pin_memory=self.device.type == "cuda",
                           persistent_workers=args.workers > 0,
                           multiprocessing_context="forkserver" if args.workers > 0 else None)
        self.train_loader = DataLoader(SeededItems(spec.train, args.seed), batch_size=local.batch_size,
                                       sampler=self.sampler, drop_last=args.drop_last, **loader_opts)
        self.test_loader = DataLoader(ranks.eval_shard(spec.test, dist), batch_size=max(args.batch_size, 256),
                                      shuffle=False, **loader_opts)
        self.flops = {"student_forward": forward_flops_per_image(self.student, spec.input_shape),
                      "student_backward": backward_flops_per_image(self.student, spec.input_shape),
                      "teacher_forward": self.teacher.describe().flops_per_image if self.teacher else 0.0,
                      "loss": self.method.flops_per_image}
        self.work = WorkCounters()
        self.progress = Progress()
        self.inflight: deque[Prepared] = deque()  # steps chosen and sent, not yet trained (--prefetch)
        self.server_start = self.teacher.try_server_stats() if self.teacher else None  # this rank's client's
        self.steps_per_epoch = len(self.train_loader)  # global steps: every rank draws its share of each
        # The rate steps per training step, so --budget can end and decay the schedule mid-epoch
        # with the same shape (milestones at the same fractions of the run).
        self.total_steps = scaled_steps(args.epochs, self.steps_per_epoch, args.budget)
        if args.max_steps is not None:
            self.total_steps = min(self.total_steps, args.max_steps)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=[scaled_steps(m, self.steps_per_epoch, args.budget) for m in args.milestones],
            gamma=args.lr_gamma)
        if args.resume:
            self.resume(args.resume)
        self._earlier_lives_seconds = self.progress.wall_seconds
        self._life_start = time.perf_counter()
        self.writer = self._tensorboard()

    # --- checkpoints ----------------------------------------------------
    def rank_state(self) -> dict:
        """What differs between ranks (``ranks.PER_RANK``): each rank's own, restored by it on resume."""
        return {"method_state": self.method.method_state(), "rng": rng_state(),
                "inflight": [prepared.to_state() for prepared in self.inflight],
                "counters": self.work.as_dict(), "timing": self.timer.as_dict(),
                "client_counters": self.teacher.counters.as_dict() if self.teacher else None,
                "server_start": asdict(self.server_start) if self.server_start else None}

    def checkpoint(self, states: list[dict]) -> dict:
        """One file for the run: weights, optimiser, schedule and progress once (the same on every rank),
        and ``states``, the ranks' own entries (``ranks.checkpoint_entries``)."""
        meta = {"dataset": self.spec.name, "method": self.args.method, "seed": self.args.seed,
                "teacher": self.teacher.describe().model_name if self.teacher else None,
                "epoch": self.progress.epochs_done, "steps": self.work.steps, "top1": self.progress.top1}
        return make_checkpoint(
            self.student, arch=self.args.arch, num_classes=self.spec.num_classes,
            input_shape=self.spec.input_shape, meta=meta,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            progress=asdict(self.progress), **ranks.checkpoint_entries(states),
            run_flags={k: plain(v) for k, v in vars(self.args).items() if k not in ("resume",)})

    def save(self, *, best: bool = False) -> None:
        """Every rank calls it (it gathers their states); rank 0 writes."""
        with self.timer.phase("checkpoint"):
            # Let the steps in flight settle (answered or failed), so the saved counters and the saved
            # answers agree: each answer is in the checkpoint exactly when it was counted.
            futures.wait([prepared.answer for prepared in self.inflight if prepared.answer is not None])
            self.progress.wall_seconds = self._wall()
            self.sync_buffers()
            ckpt = self.checkpoint(gather_objects(self.rank_state()))
            save_on_master(save_checkpoint, ckpt, self.out / "last.pt")
            if best:
                save_on_master(save_checkpoint, ckpt, self.out / "best.pt")

    def sync_buffers(self) -> None:
        """Rank 0's BatchNorm statistics (and the loss's buffers) on every rank, so all evaluate and save
        one model; between these points each rank keeps its own (per-rank BN, as torchvision's default)."""
        broadcast_buffers(self.student)
        broadcast_buffers(self.method)

    def resume(self, run_dir: str) -> None:
        path = Path(run_dir) / "last.pt" if Path(run_dir).is_dir() else Path(run_dir)
        # Weights-only (nothing in the file can run code); on the CPU, since RNG states must be CPU
        # tensors, and load_state_dict moves the rest to where the model and optimiser live.
        ckpt = load_checkpoint(path, map_location="cpu")
        if "progress" not in ckpt:
            raise CheckpointError(f"{path} holds weights only, no training state to resume from")
        if ckpt["arch"] != self.args.arch:
            raise CheckpointError(f"{path} is a {ckpt['arch']} run, but --arch is {self.args.arch}")
        own = ranks.own_entries(ckpt, self.dist, path)  # this rank's entries; another world size is refused
        self.student.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.method.load_method_state(own["method_state"])
        self.progress = Progress(**ckpt["progress"])
        self.work = WorkCounters(**own["counters"])
        self.timer.load(own["timing"])
        if self.teacher and own.get("client_counters"):
            self.teacher.counters = ClientCounters(**own["client_counters"])
        if own.get("server_start"):
            self.server_start = ServerStats(**own["server_start"])
        set_rng_state(own["rng"])
        self.inflight = deque(Prepared.from_state(state, self.device) for state in own.get("inflight") or [])
        if len(self.inflight) > self.args.prefetch + 1:
            raise CheckpointError(f"{path} has {len(self.inflight)} steps in flight; resume it with "
                                  f"--prefetch {len(self.inflight) - 1} or more")
        for prepared in self.inflight:
            self.method.resend(prepared)
        if self.dist.is_main:
            self._truncate_metrics(self.progress.epochs_done)
        log.info("resumed %s at epoch %d, step %d of it (%d steps in all)", path, self.progress.epoch,
                 self.progress.step_in_epoch, self.work.steps)

    # --- logging ----------------------------------------------------------
    def _tensorboard(self):
        if self.args.no_tensorboard or not self.dist.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out / "tensorboard"), purge_step=self.work.steps or None)

    def _truncate_metrics(self, epochs_done: int) -> None:
        """Drop lines a killed life wrote after its last checkpoint, and partial-epoch lines."""
        path = self.out / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        records = [json.loads(line) for line in lines if line.strip()]
        kept = [json.dumps(r) for r in records if r["epoch"] <= epochs_done and not r.get("partial")]
        path.write_text("".join(line + "\n" for line in kept))

    def _run_totals(self) -> tuple[WorkCounters, dict | None]:
        """The run's work and teacher-client counts, summed over the ranks (every rank must call it)."""
        return ranks.summed_work(self.work), ranks.summed_client(self.teacher.counters if self.teacher else None)

    def _compute_so_far(self, work: WorkCounters) -> tuple[float, float]:
        f = self.flops
        return (compute_flops(work, f["teacher_forward"], f["student_forward"], f["student_backward"], f["loss"]),
                kd_flops(work, f["teacher_forward"], f["student_forward"], f["student_backward"], f["loss"]))

    def _log_steps(self, sums: dict, count: int) -> None:
        """TensorBoard, every --log-every steps: every rank takes part (the figures are summed), rank 0 writes."""
        if self.args.no_tensorboard or not count:
            return
        means = ranks.mean_parts({name: value / count for name, value in sums.items()})
        work, client = self._run_totals()
        if not self.writer:
            return
        step = work.steps
        for name, value in means.items():
            self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], step)
        self.writer.add_scalar("teacher/images", work.teacher_images, step)
        self.writer.add_scalar("teacher/query_ratio", work.teacher_images / max(work.student_images, 1), step)
        if client:
            self.writer.add_scalar("teacher/bytes_sent", client["bytes_sent"], step)
            self.writer.add_scalar("teacher/bytes_received", client["bytes_received"], step)
            self.writer.add_scalar("teacher/wait_seconds", client["wait_seconds"], step)
        self.writer.add_scalar("compute/flops", self._compute_so_far(work)[0], step)

    def _wall(self) -> float:
        """Wall seconds of the whole run: earlier lives (if resumed) plus this one."""
        return self._earlier_lives_seconds + time.perf_counter() - self._life_start

    # --- training ---------------------------------------------------------
    def train_one_epoch(self) -> dict:
        """Train the epoch in progress from its saved position; return its mean loss parts."""
        args, p = self.args, self.progress
        self.model.train()
        # Batches already in flight (restored from a checkpoint) were drawn: the data order goes on after them.
        self.sampler.set_epoch(p.epoch, start=(p.step_in_epoch + len(self.inflight)) * args.batch_size)
        sums: dict[str, float] = {}
        window: dict[str, float] = {}
        steps = window_steps = 0
        start, images_at_start = time.perf_counter(), self.work.student_images
        bar = tqdm(total=self.steps_per_epoch, initial=p.step_in_epoch, desc=f"epoch {p.epoch}", leave=False,
                   disable=True if args.no_progress or not self.dist.is_main else None, dynamic_ncols=True)
        batches = iter(self.train_loader)
        while self.work.steps < self.total_steps:
            self._fill_pipeline(batches)
            if not self.inflight:
                break
            before = self.method.student_buffers()
            context = StepContext(epoch=p.epoch, epochs=args.epochs, step=self.work.steps,
                                  total_steps=self.total_steps)
            try:
                out = self.method.train_on(self.inflight[0], context)
            except TeacherUnavailable as e:
                if self.dist.enabled:  # the other ranks are elsewhere (a collective): no checkpoint together now
                    raise TeacherUnavailable(f"{e}; continue with --resume {self.out} from its last "
                                             f"checkpoint") from None
                # Save the steps in flight (their images, and answers where they came), so a
                # resumed run sends them again and trains exactly as an uninterrupted one.
                self.method.restore_student_buffers(before)
                self.save()
                raise TeacherUnavailable(f"{e}; progress saved, continue with --resume {self.out}") from None
            prepared = self.inflight.popleft()
            with self.timer.phase("student"):
                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()  # through DDP: the student's gradients are averaged over the ranks here
                average_gradients(self.method.parameters())  # the loss's own modules' (no-op in one process)
                self.optimizer.step()
                self.scheduler.step()
            self.work.add(prepared.batch_images, out)
            if args.record_indices:
                self._record_indices(prepared)
            p.step_in_epoch += 1
            steps += 1
            window_steps += 1
            for name, value in {"loss": out.loss.item(), **out.parts}.items():
                sums[name] = sums.get(name, 0.0) + value
                window[name] = window.get(name, 0.0) + value
            if self.work.steps % args.log_every == 0:
                self._log_steps(window, window_steps)
                window, window_steps = {}, 0
            bar.update(1)
            if steps % 10 == 0:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{sums['loss'] / steps:.3f}",
                                img_s=f"{(self.work.student_images - images_at_start) / max(elapsed, 1e-9):.0f}",
                                teacher=f"{self.work.teacher_images / max(self.work.student_images, 1):.2f}")
            if args.checkpoint_every and self.work.steps % args.checkpoint_every == 0:
                self.save()
        bar.close()
        self._log_steps(window, window_steps)
        return {name: value / max(steps, 1) for name, value in sums.items()} | {"steps": steps}

    def _record_indices(self, prepared: Prepared) -> None:
        """``--record-indices``: this rank's trained data-set indices of this global step, one JSON line."""
        record = {"step": self.work.steps, "epoch": self.progress.epoch,
                  "indices": prepared.query.indices.tolist()}
        with (self.out / f"indices.rank{self.dist.rank}.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _fill_pipeline(self, batches) -> None:
        """Draw, choose and send until ``--prefetch`` steps are in flight beyond the one to train now.

        With D > 0 the teacher answers about the next batches while the student trains
        on this one; their images were chosen (UNIX's uncertainty pass) with weights up to
        D steps older. Never past the epoch's end or ``--max-steps``.
        """
        args = self.args
        left = self.total_steps - self.work.steps
        while len(self.inflight) <= args.prefetch and len(self.inflight) < left:
            with self.timer.phase("data"):
                batch = next(batches, None)
            if batch is None:
                return
            images, labels, indices = (t.to(self.device, non_blocking=True) for t in batch)
            self.inflight.append(self.method.prepare(images, labels, indices))

    def end_epoch(self, parts: dict, epoch_seconds: float) -> None:
        """Evaluate; a complete epoch also steps the schedule and moves on to the next one.

        A run stopped by ``--max-steps`` or ``--budget`` mid-epoch is evaluated and saved
        where it stands (its metrics line marked ``partial``), so a resume finishes that epoch.
        """
        args, p = self.args, self.progress
        complete = p.step_in_epoch >= self.steps_per_epoch
        with self.timer.phase("eval"):
            self.sync_buffers()
            p.top1 = evaluate(self.student, self.test_loader, self.device)
        if complete:
            p.epochs_done = p.epoch
        parts = ranks.mean_parts(parts)
        work, client = self._run_totals()
        cost, kd_cost = self._compute_so_far(work)
        record = {"epoch": p.epoch, "top1": p.top1, "lr": self.optimizer.param_groups[0]["lr"], **parts,
                  **work.as_dict(), "compute_flops": cost, "kd_flops": kd_cost,
                  "epoch_seconds": epoch_seconds, **({} if complete else {"partial": True})}
        if client:
            record |= {"teacher_" + k: v for k, v in client.items()}
        if self.dist.is_main:
            with (self.out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer:
            self.writer.add_scalar("test/top1", p.top1, p.epoch)
            self.writer.add_scalar("test/top1_by_teacher_images", p.top1, work.teacher_images)
            self.writer.flush()
        log.info("epoch %d/%d  loss %.4f  top-1 %.2f%%  teacher images %d of %d  (%.1f s)", p.epoch,
                 args.epochs, parts.get("loss", float("nan")), p.top1, work.teacher_images,
                 work.student_images, epoch_seconds)
        best = p.top1 > p.best_top1
        p.best_top1 = max(p.best_top1, p.top1)
        if complete:
            p.epoch, p.step_in_epoch = p.epoch + 1, 0
        self.save(best=best)

    def done(self) -> bool:
        return self.progress.epoch > self.args.epochs or self.work.steps >= self.total_steps

    def epochs_trained(self) -> float:
        return self.progress.epochs_done + (self.progress.step_in_epoch / max(self.steps_per_epoch, 1))

    def train(self) -> dict:
        if not self.args.resume and self.dist.is_main:
            (self.out / "metrics.jsonl").write_text("")
        if not self.args.resume and self.args.record_indices:
            (self.out / f"indices.rank{self.dist.rank}.jsonl").write_text("")
        try:
            while not self.done():
                epoch_start = time.perf_counter()
                parts = self.train_one_epoch()
                if parts["steps"] or self.progress.step_in_epoch:
                    self.end_epoch(parts, time.perf_counter() - epoch_start)
            server_end = self.teacher.try_server_stats() if self.teacher else None
        finally:
            if self.teacher:
                self.teacher.close()
            if self.writer:
                self.writer.close()
        return self.finish(server_end)

    def finish(self, server_end) -> dict:
        """The run's summary, its counts summed over the ranks (on every rank); rank 0 writes and prints it."""
        work, client = self._run_totals()
        server_start, server_end = ranks.summed_server(self.server_start), ranks.summed_server(server_end)
        cost, kd_cost = self._compute_so_far(work)
        p = self.progress
        summary = build_summary(args=self.args, spec=self.spec, work=work, top1=p.top1,
                                best_top1=p.best_top1, epochs=round(self.epochs_trained(), 4), teacher=self.teacher,
                                client=client, server_start=server_start, server_end=server_end, flops=self.flops,
                                cost=cost, kd_cost=kd_cost, wall_seconds=self._wall(),
                                time_split=self.timer.as_dict(),
                                k=self.method.images_per_batch * self.dist.world_size,
                                processes=self.dist.world_size)
        if self.dist.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            print(format_summary(summary))
        barrier()  # every rank returns once the run's files are written
        return summary


def run(args) -> dict:
    """Train one student as the flags say; return (and write) the run's summary.

    Under ``torchrun`` (RANK and WORLD_SIZE set, more than one process) every rank runs this and
    they train the one student together (see ``ranks.py``).
    """
    dist = init_distributed(use_cuda=resolve_device(args.device).type == "cuda")
    try:
        return Trainer(args, dist).train()
    finally:
        cleanup()
