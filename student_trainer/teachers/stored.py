"""The teacher as an answer store remembers it: its description, for a run that needs no teacher at all.

A run with a live teacher records the teacher's ``TeacherInfo`` in the store
under its weights' sha256. A later run whose every view is stored can then be
given ``--teacher-id SHA256`` instead of ``--teacher-url`` (FKD's offline
mode): it builds its loss from the record and never connects anywhere.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import Future

import torch

from common.answer_store import AnswerStore, namespace
from common.answer_store.codec import Entry
from common.reductions import LOGITS
from student_trainer.teachers.base import TeacherClient
from student_trainer.teachers.types import ServerStats, TeacherFuture, TeacherInfo


def _record_key(sha256: str) -> bytes:
    return namespace("teacher-record", sha256)


def record_teacher(store: AnswerStore, info: TeacherInfo) -> None:
    """Put the teacher's description in the store (once: a record already there stays)."""
    header = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(info).items()}
    header["output_shapes"] = {k: list(v) for k, v in info.output_shapes.items()}
    header = {k: v for k, v in header.items() if v is not None}  # the codec's JSON has no null
    store.write([(_record_key(info.weights_sha256), Entry(header, {}))])


def _read_info(header: dict, sha256: str) -> TeacherInfo:
    try:
        info = TeacherInfo(
            model_name=str(header["model_name"]), arch=str(header["arch"]),
            input_shape=tuple(int(d) for d in header["input_shape"]), num_classes=int(header["num_classes"]),
            feature_names=[str(n) for n in header["feature_names"]],
            flops_per_image=float(header["flops_per_image"]), max_batch_size=int(header["max_batch_size"]),
            output_shapes={str(k): tuple(int(d) for d in v) for k, v in header["output_shapes"].items()},
            reductions=[str(r) for r in header["reductions"]],
            dataset=None if header.get("dataset") is None else str(header["dataset"]),
            weights_sha256=str(header["weights_sha256"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ValueError(f"the answer store's record of teacher {sha256[:12]} is damaged") from None
    if info.weights_sha256 != sha256 or len(info.input_shape) != 3:
        raise ValueError(f"the answer store's record of teacher {sha256[:12]} is damaged")
    return info


class StoredTeacher(TeacherClient):
    """A teacher that is not there: it describes itself from the store and answers nothing. The replay
    policy takes every answer from the store; a view missing there is an error, never a silent guess."""
    asks_live_teacher = False

    def __init__(self, info: TeacherInfo, where: str):
        super().__init__()
        self.info, self.url = info, f"the answers stored in {where}"

    @classmethod
    def from_store(cls, store: AnswerStore, sha256: str) -> "StoredTeacher":
        sha256 = sha256.strip().lower()
        entry = store.read([_record_key(sha256)])[0]
        if entry is None:
            raise ValueError(f"{store.url} holds no answers of teacher {sha256[:12]} (--teacher-id is the full "
                             "sha256 a run with the teacher logs); give --teacher-url to ask the teacher")
        return cls(_read_info(entry.header, sha256), store.url)

    @classmethod
    def from_url(cls, url: str, **options) -> "StoredTeacher":
        raise ValueError("a stored teacher is opened from an answer store, not a URL")

    def describe(self) -> TeacherInfo:
        return self.info

    def submit(self, images: torch.Tensor, outputs=(LOGITS,), views=None, verify: bool = False) -> Future:
        """A future that fails: there is no teacher to ask about views the store does not hold."""
        future = TeacherFuture(lambda: self.counters)
        future.set_exception(RuntimeError(f"no teacher to ask about {images.shape[0]} views missing from "
                                          f"{self.url}; give --teacher-url"))
        return future

    def server_stats(self) -> ServerStats:
        return ServerStats(images=0, requests=0, forward_seconds=0.0, source="no teacher: answers from the store",
                           per_client=True)
