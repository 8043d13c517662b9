"""Answers in an LMDB directory: one host, any number of processes at once.

LMDB serialises writers with its own lock and lets readers run beside them, so
several runs (or torchrun ranks) on one machine can share a store. It is not
for network filesystems: several hosts share a Redis store instead.

py-lmdb refuses to open one environment twice in a process, so stores of the
same path in one process share a handle (counted). A process only uses the
handle it opened itself: a forked child opens its own on first use.
"""
from __future__ import annotations

import os
import threading

import lmdb

from common.answer_store.base import AnswerStore

_DEFAULT_MAP_SIZE = 1 << 40  # 1 TiB of address space; the file grows as it fills (sparse)


def _line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class _Shared:
    """One environment handle and how many stores in this process use it."""

    def __init__(self, env: lmdb.Environment, ident: tuple[int, int]) -> None:
        self.env, self.ident, self.users = env, ident, 0


_lock = threading.Lock()
_open: dict[str, _Shared] = {}  # realpath -> handle, opened by _open_pid
_open_pid = os.getpid()
_inherited: set[str] = set()  # paths a parent process had open when it forked us


def _ident(path: str) -> tuple[int, int]:
    st = os.stat(os.path.join(path, "data.mdb"))
    return st.st_dev, st.st_ino


def _open_env(path: str, url: str, map_size: int) -> lmdb.Environment:
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{url}: not an LMDB store (a file, where a directory is expected)")
    try:
        os.makedirs(path, exist_ok=True)
        env = lmdb.open(path, map_size=map_size, subdir=True, max_readers=512, lock=True,
                        readahead=False)  # keys are read at random: no use reading ahead
    except lmdb.Error as e:
        if path in _inherited:
            raise ValueError(f"{url}: this process was forked while its parent had the store open, and LMDB "
                             f"cannot open it again here; open the store only after forking (or use "
                             f"the 'spawn' start method)") from None
        raise ValueError(f"{url}: not a usable LMDB store ({_line(e)})") from None
    except OSError as e:
        raise ValueError(f"{url}: cannot open ({_line(e)})") from None
    try:
        # Pages past the end of a truncated data.mdb would crash the process (SIGBUS) when read.
        info, psize = env.info(), env.stat()["psize"]
        have = os.path.getsize(os.path.join(path, "data.mdb"))
        need = (info["last_pgno"] + 1) * psize
        if have < need:
            raise ValueError(f"{url}: data.mdb is truncated ({have} bytes of {need}); restore it or remove the store")
        env.reader_check()  # free reader slots of processes that died holding them
    except BaseException:
        env.close()
        raise
    return env


def _acquire(path: str, url: str, map_size: int) -> _Shared:
    global _open_pid
    with _lock:
        if os.getpid() != _open_pid:  # forked: the parent's handles are not ours (never close them here)
            _inherited.update(_open)
            _open.clear()
            _open_pid = os.getpid()
        shared = _open.get(path)
        if shared is not None:
            try:
                same = _ident(path) == shared.ident
            except OSError:
                same = False
            if not same:  # deleted and made anew while open: the old handle is for other files
                shared = None
        if shared is None:
            env = _open_env(path, url, map_size)
            shared = _open[path] = _Shared(env, _ident(path))
        shared.users += 1
        return shared


def _release(path: str, shared: _Shared) -> None:
    with _lock:
        if os.getpid() != _open_pid:
            return
        shared.users -= 1
        if shared.users == 0:
            if _open.get(path) is shared:
                del _open[path]
            shared.env.close()


class LmdbStore(AnswerStore):
    """An LMDB environment directory (created if missing) holding the answers."""

    def __init__(self, path: str | os.PathLike, map_size: int = _DEFAULT_MAP_SIZE) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.url = f"lmdb:{self.path}"
        self._real = os.path.realpath(self.path)
        self._map_size = map_size
        self._shared: _Shared | None = None
        self._pid = 0
        self._closed = False
        self._first_use = threading.Lock()
        # Check it now, for a clear error at start; each process opens its own handle on first use.
        _release(self._real, _acquire(self._real, self.url, map_size))

    @classmethod
    def from_url(cls, url: str) -> LmdbStore:
        path = url.partition(":")[2] if url.startswith("lmdb:") else url
        if not path:
            raise ValueError(f"{url!r}: no path; write lmdb:PATH")
        return cls(path)

    def _env(self) -> lmdb.Environment:
        if self._closed:
            raise ValueError(f"{self.url}: the store is closed")
        if self._pid != os.getpid():
            with self._first_use:
                if self._pid != os.getpid():  # a parent's handle is just dropped, never closed here
                    self._shared = _acquire(self._real, self.url, self._map_size)
                    self._pid = os.getpid()
        return self._shared.env

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        env = self._env()
        try:
            with env.begin() as txn:
                return [txn.get(k) for k in keys]
        except lmdb.Error as e:
            raise ValueError(f"{self.url}: {_line(e)}") from None

    def put_many(self, items: list[tuple[bytes, bytes]]) -> list[bool]:
        if not items:
            return []
        env = self._env()
        try:
            with env.begin(write=True) as txn:
                return [txn.put(k, v, overwrite=False) for k, v in items]
        except lmdb.MapFullError:
            raise ValueError(f"{self.url} is full: its map size of {self._map_size} bytes is used up; "
                             f"nothing of this write was stored") from None
        except lmdb.Error as e:
            raise ValueError(f"{self.url}: {_line(e)}") from None

    def close(self) -> None:
        if self._shared is not None and self._pid == os.getpid():
            _release(self._real, self._shared)
        self._shared, self._pid, self._closed = None, 0, True

    def describe(self) -> str:
        env = self._env()
        stat, info = env.stat(), env.info()
        used = (info["last_pgno"] + 1) * stat["psize"]
        return f"{self.url} (LMDB: {stat['entries']} entries, {used / 2**20:.1f} MiB)"
