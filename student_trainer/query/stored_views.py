"""Where replayed views live in an answer store: V slots an image, each a view's recipe with the teacher's
answer for it.

An image's slots are keys ``namespace + (sample, slot)``; the namespace is the
teacher (its weights' sha256), the data set (its fingerprint) and the outputs
stored, so a store written for another teacher, data set or loss is never read
as this one's. Slots are written put-if-absent: runs that fill one store at
once never overwrite each other, and an image never holds more than V views.
"""
from __future__ import annotations

import struct

import torch

from common import reductions
from common.answer_store import AnswerStore, namespace
from common.answer_store.codec import Entry
from common.topk import TopK, from_many, to_tensors
from common.views import Views

_SLOT = struct.Struct("<qI")


class ViewShelf:
    """The stored views of every image, for one teacher, data set and set of outputs.

    A top-k key's answer (``logits.top10``: dense logits rebuilt from the top K) is stored as its compact
    form, K indices, K values and the rest (``common.topk``; 64 bytes an entry at K = 10 with its view), and
    read back as the same dense tensor; ``classes`` (the teacher's) says how long that tensor is."""

    def __init__(self, store: AnswerStore, *, teacher_sha256: str, data_fingerprint: str, keys: list[str],
                 views: int, classes: int = 0):
        self.store, self.keys, self.views = store, sorted(keys), views
        self.top = {key: k for key in self.keys if (k := reductions.top_k(reductions.parse_key(key)[1]))}
        if self.top and classes < 1:
            raise ValueError(f"a shelf of top-k answers ({', '.join(self.top)}) needs the teacher's class count")
        self.classes = classes
        self.names = {"teacher_sha256": teacher_sha256, "data_fingerprint": data_fingerprint, "keys": self.keys,
                      "classes": classes}
        self.prefix = namespace("replayed-views", teacher_sha256, data_fingerprint, ",".join(self.keys))

    def _key(self, sample: int, slot: int) -> bytes:
        return self.prefix + _SLOT.pack(sample, slot)

    def read(self, samples: list[int]) -> list[list[Entry | None]]:
        """Each sample's V slots (None: empty, or damaged and counted so by the store)."""
        entries = [self._usable(e) for e in self.store.read([self._key(s, j) for s in samples
                                                             for j in range(self.views)])]
        if self.top:
            entries = self._rebuilt(entries)
        return [entries[i * self.views:(i + 1) * self.views] for i in range(len(samples))]

    def _usable(self, entry: Entry | None) -> Entry | None:
        """An entry that holds a recipe and every output this shelf stores, else None (as a miss)."""
        if entry is None:
            return None
        recipe = entry.header.get("recipe")
        if not (isinstance(recipe, list) and len(recipe) == Views.COLUMNS and all(isinstance(v, int) for v in recipe)):
            return None
        if any(k not in entry.tensors for k in self.keys if k not in self.top):
            return None
        return entry

    def _rebuilt(self, entries: list[Entry | None]) -> list[Entry | None]:
        """Each entry with its top-k answers rebuilt to dense tensors, all of a read at once (None: an entry
        without a well-formed answer of this shelf's K, read as a miss)."""
        out = list(entries)
        for key, k in self.top.items():
            name = reductions.parse_key(key)[0]
            present = [n for n, e in enumerate(out) if e is not None]
            answers, ok = from_many(name, [out[n].tensors for n in present], self.classes)
            if answers is None or answers.k != k:
                ok = [False] * len(present)
            dense = answers.dense() if answers is not None else None
            row = 0
            for n, good in zip(present, ok):
                if not good:
                    out[n] = None
                    continue
                tensors = {t: v for t, v in out[n].tensors.items() if not t.startswith(f"{name}.topk.")}
                tensors[key] = dense[row]
                row += 1
                out[n] = Entry(out[n].header, tensors)
        return out

    def _packed(self, entry: Entry) -> Entry:
        """The entry as stored: each top-k key's dense answer as its compact tensors."""
        if not self.top:
            return entry
        tensors = dict(entry.tensors)
        for key, k in self.top.items():
            dense = tensors.pop(key)
            tensors.update(to_tensors(reductions.parse_key(key)[0], TopK.from_logits(dense.reshape(1, -1), k)))
        return Entry(entry.header, tensors)

    def write(self, samples: list[int], free: list[list[int]], entries: list[Entry]) -> int:
        """Put each entry in its sample's first free slot that is still free (another run may have taken it
        meanwhile); returns how many were stored. A sample with no free slot left stores nothing."""
        packed = [self._packed(e) for e in entries]
        left = list(range(len(samples)))
        tried = [0] * len(samples)
        stored = 0
        while left:
            batch = [(i, free[i][tried[i]]) for i in left if tried[i] < len(free[i])]
            if not batch:
                break
            done = self.store.write([(self._key(samples[i], slot), packed[i]) for i, slot in batch])
            stored += sum(done)
            left = []
            for (i, _), ok in zip(batch, done):
                if not ok:
                    tried[i] += 1
                    left.append(i)
        return stored


def recipe_of(entry: Entry) -> list[int]:
    return list(entry.header["recipe"])


def views_of(recipes: list[list[int]]) -> Views:
    return Views.from_array(torch.tensor(recipes, dtype=torch.long).numpy())
