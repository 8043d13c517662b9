"""A store of teacher answers, written once and reused by later runs, runs at once and other hosts.

``open_store(url)`` picks the backend by the URL's scheme:

- ``lmdb:PATH`` or a bare directory path: an LMDB environment on this host;
- ``redis://HOST:PORT/DB`` (``rediss://`` for TLS): a Redis database, shared across hosts.

Values are a JSON header plus raw tensor bytes (``codec``): nothing read from a
store is unpickled or evaluated. Keys are bytes; start them with ``namespace(...)``.
"""
from __future__ import annotations

import re

from common.answer_store.base import AnswerStore, StoreCounters, namespace
from common.answer_store.codec import DamagedEntry, Entry, decode, encode
from common.answer_store.lmdb_store import LmdbStore
from common.answer_store.redis_store import RedisStore

STORES: dict[str, type[AnswerStore]] = {
    "lmdb": LmdbStore,
    "redis": RedisStore,
    "rediss": RedisStore,
}
_BARE_PATH = LmdbStore  # a URL without a scheme is a directory
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

__all__ = ["STORES", "AnswerStore", "DamagedEntry", "Entry", "LmdbStore", "RedisStore", "StoreCounters",
           "decode", "encode", "namespace", "open_store"]


def open_store(url: str) -> AnswerStore:
    """The store at ``url``; ValueError (one line) for an unknown scheme or a store that cannot be used."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"answer store URL {url!r} is empty; give lmdb:PATH, a directory or redis://HOST:PORT/DB")
    m = _SCHEME.match(url)
    if m is None:
        return _BARE_PATH.from_url(url)
    cls = STORES.get(m.group(1).lower())
    if cls is None:
        raise ValueError(f"answer store URL {url!r}: unknown scheme {m.group(1)!r}; "
                         f"known: {', '.join(sorted(STORES))} (or a bare directory path)")
    return cls.from_url(url)
