"""What every answer store does; a backend only moves raw bytes.

A backend implements ``get_many`` and ``put_many`` (put-if-absent) once per
round trip; reading and writing entries, the codec and the counters live here
once, so every backend treats damaged bytes and repeated writes the same way.
"""
from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields

from common.answer_store.codec import DamagedEntry, Entry, decode, encode

_NAMESPACE_BYTES = 16


def namespace(*parts: str) -> bytes:
    """A fixed-length (16-byte) key prefix naming what the answers belong to.

    Call it with whatever identifies the answers (the teacher's weights sha256,
    the data set, the output set, ...) and put it in front of each view's key:
    keys of another teacher or data set then never collide with these. Each part
    is hashed with its length in front, so ``("ab", "c")`` and ``("a", "bc")``
    differ; the prefix has a fixed length, so prefix + suffix is unambiguous too.
    """
    h = hashlib.sha256(b"answer-store namespace v1\0")
    for p in parts:
        if not isinstance(p, str):
            raise TypeError(f"namespace parts are str, got {type(p).__name__}")
        raw = p.encode("utf-8")
        h.update(len(raw).to_bytes(8, "little") + raw)
    return h.digest()[:_NAMESPACE_BYTES]


@dataclass
class StoreCounters:
    """What a store has done since it was opened; safe to update from several threads.

    ``misses`` counts every entry ``read`` returned as None, the damaged ones included;
    ``damaged`` counts those that were present but did not decode.
    """

    hits: int = 0
    misses: int = 0
    damaged: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    written: int = 0
    already_present: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, d in deltas.items():
                setattr(self, name, getattr(self, name) + d)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


def _check_keys(keys) -> None:
    for k in keys:
        if not isinstance(k, bytes):
            raise TypeError(f"store keys are bytes, got {type(k).__name__}")


class AnswerStore(ABC):
    """Teacher answers keyed by bytes, written once and read by any run that asks.

    Subclasses set ``url`` and implement the raw calls below.
    """

    url: str

    def __init__(self) -> None:
        self.counters = StoreCounters()

    @abstractmethod
    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """The stored bytes of each key (None where absent), in one round trip where possible."""

    @abstractmethod
    def put_many(self, items: list[tuple[bytes, bytes]]) -> list[bool]:
        """Store each value unless its key exists: True where this call wrote it, False where it was there.

        Never overwrites, so runs writing the same answers at once lose nothing.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the backend's handles; calling it twice is harmless."""

    @abstractmethod
    def describe(self) -> str:
        """One line for logs: where the store is and how big."""

    def read(self, keys: list[bytes]) -> list[Entry | None]:
        """The entry under each key; None where absent or damaged (counted, never raised)."""
        keys = list(keys)
        if not keys:
            return []
        _check_keys(keys)
        raws = self.get_many(keys)
        out: list[Entry | None] = []
        hits = damaged = nbytes = 0
        for raw in raws:
            if raw is None:
                out.append(None)
                continue
            nbytes += len(raw)
            try:
                out.append(decode(raw))
                hits += 1
            except DamagedEntry:
                out.append(None)
                damaged += 1
        self.counters.add(hits=hits, misses=len(keys) - hits, damaged=damaged, bytes_read=nbytes)
        return out

    def write(self, items: list[tuple[bytes, Entry]]) -> list[bool]:
        """Store each entry unless its key exists (see ``put_many``); True where this call wrote it."""
        encoded = [(k, encode(e)) for k, e in items]
        if not encoded:
            return []
        _check_keys(k for k, _ in encoded)
        done = self.put_many(encoded)
        n = sum(done)
        self.counters.add(written=n, already_present=len(done) - n,
                          bytes_written=sum(len(v) for (_, v), ok in zip(encoded, done) if ok))
        return done

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
