"""A training run's configuration as typed values: what the engine reads instead of parsed flags.

The CLI maps its flags to a ``TrainConfig`` (``cli.train_config``); the engine reads
only these frozen sections, so a run can be configured without argparse. Each
section is one concern: the method (policy and loss, ``method.Method``), the teacher
and how it is reached, the data, the model and its schedule, and the run's own
files, devices and logs. ``flags`` keeps the flags as given, to record with the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from student_trainer.method import Method
from student_trainer.teachers.options import DEFAULTS as CONNECTION


@dataclass(frozen=True)
class TeacherConfig:
    """Which teacher answers (a URL, or a stored one) and how it is reached."""
    url: str | None = None                   # grpc://, grpcs://, triton://, local: (None: no live teacher)
    replay_store: str | None = None          # the replay store (--query replay): a folder, lmdb:PATH or redis://
    stored_id: str | None = None             # the sha256 of a teacher to train on from the store alone
    wire_dtype: str = CONNECTION.wire_dtype
    send: str = CONNECTION.send
    timeout: float = CONNECTION.timeout
    connect_timeout: float = CONNECTION.connect_timeout
    max_wait: float = CONNECTION.max_wait
    tls_ca: str | None = None
    token_file: str | None = None
    client_id: str | None = None
    prefetch: int | None = None              # steps chosen and sent ahead of the one in training; None: auto
    serial: bool = False                     # wait for each answer before the student's forward


@dataclass(frozen=True)
class DataConfig:
    """The data set, its subsets and normalisation, and how its views are drawn and loaded."""
    dataset: str | None = None               # None: the one the teacher says it was trained on
    root: str | None = None
    download: bool = False
    train_size: int | None = None
    test_size: int | None = None
    image_shape: tuple[int, int, int] | None = None   # synthetic only
    num_classes: int | None = None                    # synthetic only
    image_size: int | None = None                     # folder, imagenet
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seed: int = 0
    augment: bool = True
    draws: str = "batched"                   # data_order.DRAWS
    workers: int = 2
    drop_last: bool = False


@dataclass(frozen=True)
class ScheduleConfig:
    """The student's architecture and its SGD schedule."""
    arch: str = "resnet8"
    epochs: int = 240
    max_steps: int | None = None
    budget: float = 1.0                      # the fraction of the schedule's steps trained, its shape kept
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (150, 180, 210)
    lr_gamma: float = 0.1


@dataclass(frozen=True)
class RunConfig:
    """The run's folder, resume, checkpoints, devices and logs."""
    out: str = "runs/student"
    resume: str | None = None
    overwrite: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    deterministic: bool = False
    checkpoint_every: int = 0
    eval_every: int = 1
    log_every: int = 20
    tensorboard: bool = True
    progress: bool = True
    record_indices: bool = False


@dataclass(frozen=True)
class TrainConfig:
    method: Method
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    flags: dict = field(default_factory=dict)   # the flags as given: recorded in checkpoints, never read back

    @property
    def batch_size(self) -> int:
        """N, the global batch: the query policy's config holds it, as the policy chooses among its images."""
        return self.method.policy.batch_size
