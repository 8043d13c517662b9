"""The teacher's answers kept in an answer store, for a training loop of one's own: each (sample, view) the
teacher is asked about once, then read back by later epochs, runs and hosts.

A loop names each row by ``(sample, view)``: the data set's index of the image and an int of the loop's
choosing for the view (the epoch modulo V, an id of a crop it keeps itself, FKD-style)::

    store = AnswerCache.for_teacher("lmdb:/data/answers", teacher, dataset_id="cifar100-train")
    cached = CachedTeacher(teacher, store)
    for images, labels, samples in loader:
        teacher_logits = cached(images, samples, views=torch.full_like(samples, epoch % 4))

Entries live under ``namespace("user-views", teacher_id, dataset_id, key)`` + the packed (sample, view)
(int64 each): answers of another teacher, data set or output are never read as these. Each entry is
float32 (read back bit for bit) with its (sample, view) in the header, so an entry under another key, of
another shape or of another output reads as missing, as a damaged one does (and is counted so: a miss and
``damaged``); nothing read raises.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from common.answer_store import AnswerStore, Entry, StoreCounters, namespace, open_store

if TYPE_CHECKING:
    from student_trainer.library.teacher_module import TeacherModule

_ROW = np.dtype([("sample", "<i8"), ("view", "<i8")])
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class Lookup:
    """What the store holds for N rows: ``answers`` [N, ...] float32 (zeros where missing), ``found`` [N] bool."""

    answers: torch.Tensor
    found: torch.Tensor

    @property
    def missing(self) -> torch.Tensor:
        """The rows the store lacks, as indices (int64)."""
        return (~self.found).nonzero().flatten()


def _rows(values, what: str) -> torch.Tensor:
    """A 1-D int64 CPU tensor of ``values`` (a list, a tuple, an array or a 1-D int tensor)."""
    t = torch.as_tensor(values).detach().cpu() if not isinstance(values, torch.Tensor) else values.detach().cpu()
    if t.numel() == 0:
        t = t.reshape(0).long()
    if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{what} must be a 1-D list or tensor of ints, got {t.dtype} of shape {list(t.shape)}")
    return t.long()


class AnswerCache:
    """The answers of one teacher (``teacher_id``) about one data set (``dataset_id``) for one output
    (``key``), kept in the store at ``url`` (``lmdb:PATH``, a directory, ``redis://HOST:PORT/DB``).

    ``shape``: one row's answer shape (``(classes,)`` for logits); None: learned from the first answer kept
    or read. ``lookup`` reads, ``keep`` writes put-if-absent; ``counters`` are the store's (hits, misses,
    damaged, written, already_present, bytes). Closes with ``close()`` or a ``with`` block.
    """

    def __init__(self, url: str, *, teacher_id: str, dataset_id: str, key: str = "logits",
                 shape: Sequence[int] | None = None):
        for name, value in (("teacher_id", teacher_id), ("dataset_id", dataset_id), ("key", key)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty str, got {value!r}")
        self.teacher_id, self.dataset_id, self.key = teacher_id, dataset_id, key
        self.shape = None if shape is None else tuple(int(d) for d in shape)
        self.prefix = namespace("user-views", teacher_id, dataset_id, key)
        self.store: AnswerStore = open_store(url)

    @classmethod
    def for_teacher(cls, url: str, teacher: TeacherModule, dataset_id: str, *,
                    teacher_id: str | None = None) -> AnswerCache:
        """The store of ``teacher``'s answers: its weights' sha256 as ``teacher_id`` (give one where the
        teacher does not say), its one output as ``key``, and ``(num_classes,)`` as the shape of logits."""
        teacher_id = teacher_id or teacher.info.weights_sha256
        if not teacher_id:
            raise ValueError(f"the teacher at {teacher.url} does not say its weights' sha256: give teacher_id=")
        if len(teacher.outputs) != 1:
            raise ValueError(f"a store keeps one output; the teacher module asks for {teacher.outputs}")
        key = teacher.outputs[0]
        shape = (teacher.num_classes,) if key == "logits" and teacher.num_classes else None
        return cls(url, teacher_id=teacher_id, dataset_id=dataset_id, key=key, shape=shape)

    @property
    def counters(self) -> StoreCounters:
        return self.store.counters

    def store_keys(self, samples, views) -> list[bytes]:
        """The store's key of each (sample, view)."""
        samples, views = _rows(samples, "samples"), _rows(views, "views")
        if samples.shape != views.shape:
            raise ValueError(f"{len(samples)} samples but {len(views)} views: give one view per sample")
        rows = np.empty(len(samples), _ROW)
        rows["sample"], rows["view"] = samples.numpy(), views.numpy()
        return [self.prefix + r.tobytes() for r in rows]

    def _answer(self, entry: Entry | None, sample: int, view: int) -> torch.Tensor | None:
        """The entry's answer where it is one of this store's for (sample, view), else None (a miss)."""
        if entry is None or entry.header.get("sample") != sample or entry.header.get("view") != view:
            return None
        answer = entry.tensors.get(self.key)
        if not isinstance(answer, torch.Tensor) or answer.dtype not in _FLOATS:
            return None
        if self.shape is not None and tuple(answer.shape) != self.shape:
            return None
        return answer.float()

    def lookup(self, samples, views) -> Lookup:
        """The stored answer of each (sample, view): a ``Lookup`` (zeros and ``found`` False where missing;
        with the shape still unknown and nothing found, ``answers`` is [N, 0])."""
        keys = self.store_keys(samples, views)
        samples, views = _rows(samples, "samples").tolist(), _rows(views, "views").tolist()
        entries = self.store.read(keys)
        got = [self._answer(e, s, v) for e, s, v in zip(entries, samples, views)]
        if self.shape is None:
            self.shape = next((tuple(a.shape) for a in got if a is not None), None)
        answers = torch.zeros(len(keys), *(self.shape if self.shape is not None else (0,)))
        for i, a in enumerate(got):
            if a is not None and tuple(a.shape) == self.shape:
                answers[i] = a
            else:
                got[i] = None
        foreign = sum(e is not None and a is None for e, a in zip(entries, got))
        self.store.counters.add(hits=-foreign, misses=foreign, damaged=foreign)  # read as the misses they are
        return Lookup(answers, torch.tensor([a is not None for a in got], dtype=torch.bool))

    def keep(self, samples, views, answers: torch.Tensor) -> int:
        """Store each row's answer (float32) unless its (sample, view) is there; returns how many were new."""
        keys = self.store_keys(samples, views)
        answers = answers.detach().to("cpu", torch.float32)
        if answers.shape[0] != len(keys):
            raise ValueError(f"{answers.shape[0]} answers for {len(keys)} (sample, view) rows")
        if self.shape is None:
            self.shape = tuple(answers.shape[1:])
        if tuple(answers.shape[1:]) != self.shape:
            raise ValueError(f"answers of shape {list(answers.shape[1:])}; this store keeps {list(self.shape)}")
        samples, views = _rows(samples, "samples").tolist(), _rows(views, "views").tolist()
        entries = [(k, Entry({"sample": s, "view": v}, {self.key: a.clone()}))
                   for k, s, v, a in zip(keys, samples, views, answers)]
        return sum(self.store.write(entries))

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"AnswerCache({self.store.url!r}, teacher_id={self.teacher_id!r}, "
                f"dataset_id={self.dataset_id!r}, key={self.key!r})")


class CachedTeacher:
    """``teacher`` asked only about the rows ``store`` lacks: ``cached(images, samples, views)`` reads the
    store, sends the missing rows' images in one request, keeps their answers and returns all N answers
    (float32, on the images' device). ``teacher_images``: how many images the last call sent."""

    def __init__(self, teacher: TeacherModule, store: AnswerCache):
        if list(teacher.outputs) != [store.key]:
            raise ValueError(f"the store keeps {store.key!r}; the teacher module asks for {teacher.outputs}")
        self.teacher, self.store, self.teacher_images = teacher, store, 0

    def __call__(self, images: torch.Tensor, samples, views) -> torch.Tensor:
        samples, views = _rows(samples, "samples"), _rows(views, "views")
        if len(samples) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(samples)} samples: name each image's row")
        found = self.store.lookup(samples, views)
        missing = found.missing
        self.teacher_images = len(missing)
        if not len(missing):
            return found.answers.to(images.device)
        asked = self.teacher.submit(images[missing.to(images.device)]).result().detach().to("cpu", torch.float32)
        self.store.keep(samples[missing], views[missing], asked)
        answers = found.answers
        if answers.shape[1:] != asked.shape[1:]:  # the shape was unknown until now
            answers = torch.zeros(len(samples), *asked.shape[1:])
        answers[missing] = asked
        return answers.to(images.device)
