"""Everything a run trains with, built from its typed config: data, student, teacher, distiller, optimiser.

As the ``main`` of torchvision's reference ``train.py`` builds its pieces before
the epochs start; the loop (``loop.py``) only uses them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from common.answer_store import AnswerStore, open_store
from common.devices import resolve_device
from common.data import DataSpec, build_dataset
from common.models import build_model
from student_trainer.engine.accounting import flops_per_image
from student_trainer.engine.data_order import EpochSampler, training_items
from student_trainer.engine.distiller import Distiller, build_distiller
from student_trainer.engine.distributed import DistInfo, broadcast_buffers, ddp, eval_shard, rank_device, rank_name
from student_trainer.engine.run_dir import DATA_RECORD, claim
from student_trainer.engine.same_data import check_teacher_renders
from student_trainer.engine.timing import PhaseTimer
from student_trainer.run_config import DataConfig, RunConfig, ScheduleConfig, TrainConfig
from student_trainer.teachers import CLIENTS, ClientCounters, TeacherClient, TeacherInfo, connect, teacher_options
from student_trainer.teachers.stored import StoredTeacher, record_teacher

log = logging.getLogger("student_trainer")


@dataclass
class Run:
    config: TrainConfig
    dist: DistInfo
    device: torch.device
    out: Path
    spec: DataSpec
    student: nn.Module
    model: nn.Module            # what the training forward runs through: the student, or DDP around it
    teacher: TeacherClient | None
    distiller: Distiller
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: EpochSampler
    train_loader: DataLoader
    test_loader: DataLoader
    timer: PhaseTimer
    flops: dict[str, float]     # measured FLOPs per image of each kind of work (accounting)
    steps_per_epoch: int        # global steps: every rank draws its share of each
    total_steps: int
    store: AnswerStore | None = None  # --replay-store

    def sync_buffers(self) -> None:
        """Rank 0's BatchNorm statistics (and the loss's buffers) on every rank, so all evaluate and save
        one model; between these points each rank keeps its own (per-rank BN, as torchvision's default)."""
        broadcast_buffers(self.student)
        broadcast_buffers(self.distiller)

    def teacher_counters(self) -> ClientCounters | None:
        return self.teacher.counters if self.teacher else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def scaled_steps(epochs: float, steps_per_epoch: int, budget: float = 1.0) -> int:
    """Step count of ``epochs`` epochs, scaled by ``--budget`` (the schedule keeps its shape)."""
    return round(epochs * steps_per_epoch * budget)


def dataset_name(asked: str | None, teacher: TeacherClient | None) -> str:
    """``--dataset``; without it the data set the teacher was trained on (said in the log), where it says,
    else synthetic."""
    if asked:
        return asked
    info = teacher.describe() if teacher else None
    if info is None or info.dataset is None:
        return "synthetic"
    log.info("training on %s, the data set teacher %s was trained on (--dataset to choose another)",
             info.dataset, info.model_name)
    return info.dataset


def check_teacher_fits(info: TeacherInfo, spec) -> None:
    """A teacher for another data set gives silent garbage: refuse it up front, naming the flag that fixes it."""
    if tuple(info.input_shape) != tuple(spec.input_shape) or info.num_classes != spec.num_classes:
        fix = (f"train on its data set with --dataset {info.dataset}" if info.dataset
               else "give --dataset the data set it was trained on")
        raise ValueError(
            f"teacher {info.model_name} takes {'x'.join(map(str, info.input_shape))} images in "
            f"{info.num_classes} classes, but {spec.name} has {'x'.join(map(str, spec.input_shape))} "
            f"in {spec.num_classes}: {fix}")


def check_store_fits(query: str, items, teacher: TeacherClient | None, store: AnswerStore) -> None:
    """A store is keyed by the teacher's weights and the data set's views: both must be known, and the live
    teacher is recorded so that a later run can train on its answers alone."""
    if items.recipes is None:
        raise ValueError(f"--query {query} stores views as recipes: it needs --augment-draws batched, but {items.why_not_recipes}")
    info = teacher.describe() if teacher else None
    if info is not None and not info.weights_sha256:
        raise ValueError(f"teacher {info.model_name} at {teacher.url} does not say its weights' sha256 (a server "
                         "older than this trainer?): its answers cannot be stored apart from another teacher's")
    if info is not None and teacher.asks_live_teacher:
        record_teacher(store, info)
        log.info("answers of teacher %s (--teacher-id %s) go to %s", info.model_name, info.weights_sha256,
                 store.url)


def connect_teacher(config: TrainConfig, device, dist: DistInfo,
                    store: AnswerStore | None = None) -> TeacherClient | None:
    """The teacher the loss needs (None for one that needs none; the store's record of it for --teacher-id)."""
    method, wanted = config.method, config.teacher
    if not method.needs_teacher:
        return None
    if store is not None and wanted.stored_id:
        return StoredTeacher.from_store(store, wanted.stored_id)
    if not wanted.url and store is not None:
        raise ValueError(f"--loss {method.loss} needs --teacher-url, or --teacher-id SHA256 to train on the answers "
                         f"stored in {store.url} alone")
    if not wanted.url:
        raise ValueError(f"--loss {method.loss} needs --teacher-url "
                         f"(grpc://HOST:PORT, grpcs://, triton://HOST:PORT/MODEL or local:PATH)")
    options = teacher_options(wanted)
    kind = CLIENTS.get(wanted.url.split(":", 1)[0])
    if dist.enabled and kind is not None and "client_id" in kind.uses:  # each rank asks under its own id
        options["client_id"] = rank_name(wanted.client_id, dist)
    return connect(wanted.url, wire_dtype=wanted.wire_dtype, timeout=wanted.timeout,
                   connect_timeout=wanted.connect_timeout, device=str(device), **options)


def saved_normalisation(data: DataConfig, resume: str | None) -> tuple[tuple | None, tuple | None, int]:
    """(mean, std, images it was measured on): --mean/--std, else, resuming, what the run measured at its start
    (measured once)."""
    if data.mean is not None or not resume:
        return data.mean, data.std, 0
    resumed = Path(resume)
    record = (resumed if resumed.is_dir() else resumed.parent) / DATA_RECORD
    saved = json.loads(record.read_text()) if record.is_file() else {}
    if not saved.get("measured_on"):
        return None, None, 0
    return tuple(saved["mean"]), tuple(saved["std"]), saved["measured_on"]


def load_data(config: TrainConfig, teacher: TeacherClient | None) -> DataSpec:
    """The data set the config names (or the teacher's), its normalisation measured once per run."""
    data = config.data
    mean, std, measured_on = saved_normalisation(data, config.run.resume)
    spec = build_dataset(dataset_name(data.dataset, teacher), data.root, train_size=data.train_size,
                         test_size=data.test_size, image_shape=data.image_shape, num_classes=data.num_classes,
                         image_size=data.image_size, mean=mean, std=std, seed=data.seed,
                         augment=data.augment, download=data.download)
    return dataclasses.replace(spec, measured_on=measured_on) if measured_on else spec


def data_record(spec: DataSpec, data: DataConfig) -> dict:
    return {"dataset": spec.name, "data_root": data.root, "input_shape": list(spec.input_shape),
            "num_classes": spec.num_classes, "classes": list(spec.classes), "mean": list(spec.mean),
            "std": list(spec.std), "measured_on": spec.measured_on}


def set_up_torch(run: RunConfig) -> None:
    if run.threads:
        torch.set_num_threads(run.threads)
    if run.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def build_loaders(config: TrainConfig, spec: DataSpec, train_items, dist: DistInfo, device,
                  batch_size: int) -> tuple[EpochSampler, DataLoader, DataLoader]:
    """The seeded epoch order, this rank's training loader (``batch_size`` images a step) and its test loader."""
    data = config.data
    sampler = EpochSampler(len(spec.train), config.run.seed, config.batch_size, dist.rank, dist.world_size)
    # Loader processes are started by a forkserver, not forked: by now the teacher client's gRPC
    # threads are running, and forking a process with live gRPC threads is unsafe.
    loader_opts = dict(num_workers=data.workers, pin_memory=device.type == "cuda",
                       persistent_workers=data.workers > 0,
                       multiprocessing_context="forkserver" if data.workers > 0 else None)
    train_loader = DataLoader(train_items, batch_size=batch_size, sampler=sampler,
                              drop_last=data.drop_last, collate_fn=train_items.collate, **loader_opts)
    test_loader = DataLoader(eval_shard(spec.test, dist), batch_size=max(config.batch_size, 256),
                             shuffle=False, **loader_opts)
    return sampler, train_loader, test_loader


def build_schedule(schedule: ScheduleConfig, params, steps_per_epoch: int):
    """SGD over ``params`` and its step schedule; --budget ends and decays it mid-epoch with the same shape
    (milestones at the same fractions of the run), so the scheduler steps per training step."""
    optimizer = torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum,
                                weight_decay=schedule.weight_decay, nesterov=schedule.nesterov)
    total_steps = scaled_steps(schedule.epochs, steps_per_epoch, schedule.budget)
    if schedule.max_steps is not None:
        total_steps = min(total_steps, schedule.max_steps)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[scaled_steps(m, steps_per_epoch, schedule.budget) for m in schedule.milestones],
        gamma=schedule.lr_gamma)
    return optimizer, scheduler, total_steps


def build_run(config: TrainConfig, dist: DistInfo = DistInfo()) -> Run:
    device = rank_device(resolve_device(config.run.device), dist)
    local = config.method.for_rank(dist.world_size)  # N/P images a step, k/P for the teacher
    set_up_torch(config.run)
    # The teacher first, for it may say which data set to train on; before the seed, so that the student
    # and the loss draw the same numbers whatever kind it is (a local: one builds a model as it loads).
    store = open_store(config.teacher.replay_store) if config.teacher.replay_store else None
    teacher = connect_teacher(config, device, dist, store)
    seed_everything(config.run.seed)

    spec = load_data(config, teacher)
    train_items = training_items(spec, config.data.draws, config.run.seed)
    if teacher:
        check_teacher_fits(teacher.describe(), spec)
        check_teacher_renders(teacher, spec, train_items)
    if store is not None:
        check_store_fits(config.method.query, train_items, teacher, store)
    student = build_model(config.schedule.arch, num_classes=spec.num_classes, in_channels=spec.input_shape[0],
                          image_size=spec.input_shape[1:]).to(device)
    timer = PhaseTimer(device)
    distiller = build_distiller(local, student, teacher, input_shape=spec.input_shape,
                                num_classes=spec.num_classes, dataset_size=len(spec.train), device=device,
                                timer=timer, serial=config.teacher.serial, stored=train_items.recipes, store=store)
    distiller.policy.preflight(len(spec.train), stored_only=teacher is not None and not teacher.asks_live_teacher)
    if train_items.recipes is not None:
        train_items.lookahead = distiller.policy.loader_lookahead()
    # Several ranks: the training forward goes through DDP, which averages the student's gradients in
    # backward; the loss's own modules (a regressor, ...) are averaged by hand after it (the loop).
    model = ddp(student, device)
    distiller.train_through(model)

    sampler, train_loader, test_loader = build_loaders(config, spec, train_items, dist, device,
                                                       local.policy.batch_size)
    # The loss's own modules (regressors, embeddings) train beside the student.
    optimizer, scheduler, total_steps = build_schedule(
        config.schedule, [*student.parameters(), *distiller.parameters()], len(train_loader))
    # Last, once everything the config names is found and fits: a run that cannot start leaves an old one as it was.
    out = claim(Path(config.run.out), config.run.resume, config.run.overwrite)
    if dist.is_main:
        (out / DATA_RECORD).write_text(json.dumps(data_record(spec, config.data), indent=2) + "\n")
    return Run(config, dist, device, out, spec, student, model, teacher, distiller, optimizer, scheduler, sampler,
               train_loader, test_loader, timer,
               flops_per_image(student, spec.input_shape, teacher, distiller.flops_per_image),
               len(train_loader), total_steps, store)
