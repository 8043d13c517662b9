"""Top-k teacher answers (common.topk) and the answer store's compact layout for them: the rebuild keeps the
tail's mass, a stored answer rebuilds the same bits, and damaged bytes are refused in one line, never
with another exception."""
from __future__ import annotations

import random
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.answer_store.codec import DamagedEntry, Entry, decode, encode
from common.topk import TopK, bytes_per_answer, from_tensors, to_tensors

UNMIXED = [7, -2, 3, 28, 28, 1, -1, 0, 0, 0, 0, 0, 0]   # Views.as_array of an unmixed view


def logits(n: int, c: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed)) * scale


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def kd(student: torch.Tensor, teacher: torch.Tensor, t: float = 4.0) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean",
                    log_target=True) * t * t


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


# ---------------------------------------------------------------- rebuilding

def test_dense_puts_the_top_k_at_their_classes_and_rest_elsewhere():
    x = logits(64, 100)
    t = TopK.from_logits(x, 5)
    assert (t.n, t.k, t.classes) == (64, 5, 100)
    assert t.indices.dtype == torch.int16 and t.values.dtype == torch.float16 and t.rest.dtype == torch.float16
    top, idx = x.topk(5, dim=1)
    assert torch.equal(t.indices.long(), idx) and torch.equal(t.values, top.half())
    d = t.dense()
    assert d.dtype == torch.float32 and d.shape == (64, 100)
    assert torch.equal(d.gather(1, idx), top.half().float())
    tail = torch.ones_like(d, dtype=torch.bool).scatter_(1, idx, False)
    assert torch.equal(d[tail].view(64, 95), t.rest.float().unsqueeze(1).expand(64, 95))
    assert bool((t.rest <= t.values.min(dim=1).values).all())


def test_rest_is_the_tails_log_mean_exp_to_float16_precision_and_keeps_its_mass():
    x = logits(64, 1000, scale=2.0).double()
    t = TopK.from_logits(x.float(), 10)
    tail = torch.ones_like(x, dtype=torch.bool).scatter_(1, t.indices.long(), False)
    exact = torch.logsumexp(x.masked_fill(~tail, float("-inf")), dim=1) - np.log(990)
    half_ulp = 2.0 ** (torch.floor(torch.log2(exact.abs())) - 11)
    assert bool(((t.rest.double() - exact).abs() <= half_ulp).all())
    # The rebuilt softmax at T=1 keeps the tail's total mass (to float16 precision; the top-K rounded too).
    rebuilt = torch.softmax(t.dense().double(), dim=1)[tail].view(64, 990).sum(1)
    original = torch.softmax(x.half().double(), dim=1)[tail].view(64, 990).sum(1)
    assert float(((rebuilt - original).abs() / original).max()) < 3e-3
    # ... and spreads it evenly: every tail class gets the same probability.
    p = torch.softmax(t.dense(), dim=1)[tail].view(64, 990)
    assert torch.equal(p, p[:, :1].expand_as(p))


def test_k_equal_to_classes_is_the_logits_in_float16_and_the_same_kd_loss():
    x, student = logits(32, 10, seed=1), logits(32, 10, seed=2)
    t = TopK.from_logits(x, 10)
    assert torch.equal(t.rest, torch.zeros(32, dtype=torch.float16))
    assert same_bits(t.dense(), x.half().float())
    assert same_bits(kd(student, t.dense()), kd(student, x.half().float()))


@pytest.mark.parametrize("c", [10, 100, 1000])
def test_a_rebuilt_answer_rebuilds_the_same_bits(c):
    for k in (1, 5, 10, c):
        if k > c:
            continue
        t = TopK.from_logits(logits(50, c, seed=c + k), k)
        again = TopK.from_logits(t.dense(), k)
        assert same_bits(again.dense(), t.dense()), (c, k)
        assert torch.equal(again.rest, t.rest) and torch.equal(again.values, t.values)


def test_a_tail_of_equal_values_gives_back_exactly_that_value():
    for v in (0.1, -3.7, 12.3, 1e-3, -65000.0):
        x = torch.full((3, 1000), float(torch.tensor(v).half()))
        x[:, :4] = torch.tensor([70.0, 60.0, 50.0, 40.0]) if v < 40 else x[:, :4]
        t = TopK.from_logits(x, 4)
        assert torch.equal(t.rest, torch.full((3,), v).half()), v
    # A tie at the top-K's edge: the top-K may take a tail class; the rebuild is the same bits.
    x = torch.tensor([[5.0, 2.0, 2.0, 2.0, 2.0, -1.0, -1.0]])
    t = TopK.from_logits(x, 3)
    assert same_bits(TopK.from_logits(t.dense(), 3).dense(), t.dense())


# ---------------------------------------------------------------- bytes, rows, entry tensors

def test_bytes_round_trip_little_endian_and_columnar():
    t = TopK.from_logits(logits(17, 1000, seed=3), 10)
    data = t.to_bytes()
    assert len(data) == 17 * bytes_per_answer(10) == 17 * 42
    assert data[:2] == struct.pack("<h", int(t.indices[0, 0]))
    assert data[17 * 20:17 * 20 + 2] == t.values[0, 0].numpy().astype("<f2").tobytes()
    got = TopK.from_bytes(data, 17, 10, 1000)
    assert torch.equal(got.indices, t.indices) and torch.equal(got.values, t.values)
    assert torch.equal(got.rest, t.rest) and got.classes == 1000
    assert TopK.from_bytes(bytearray(data), 17, 10, 1000).n == 17
    assert TopK.from_bytes(b"", 0, 10, 1000).n == 0


def test_take_and_cat():
    t = TopK.from_logits(logits(10, 100, seed=4), 5)
    parts = [t.take([0, 3]), t.take(torch.tensor([9])), t.take(torch.arange(10) == 5), t.take([])]
    assert [p.n for p in parts] == [2, 1, 1, 0]
    joined = TopK.cat(parts)
    assert torch.equal(joined.dense(), t.dense()[[0, 3, 9, 5]])
    with pytest.raises(ValueError, match="different"):
        TopK.cat([t, TopK.from_logits(logits(1, 100), 6)])
    with pytest.raises(ValueError, match="nothing"):
        TopK.cat([])


def bad_bytes(indices, values, rest) -> bytes:
    return (np.asarray(indices, "<i2").tobytes() + np.asarray(values, "<f2").tobytes()
            + np.asarray(rest, "<f2").tobytes())


GOOD = ([[3, 1], [0, 2]], [[2.0, 1.0], [5.0, 4.0]], [0.5, 3.0])


@pytest.mark.parametrize("data, n, k, classes, word", [
    (bad_bytes(*GOOD) + b"\x00", 2, 2, 4, "bytes"),
    (bad_bytes(*GOOD)[:-1], 2, 2, 4, "bytes"),
    (bad_bytes(*GOOD), 2, 0, 4, "k=0"),
    (bad_bytes(*GOOD), 2, 5, 4, "k=5"),
    (bad_bytes(*GOOD), 2, 2, 40000, "classes"),
    (bad_bytes(*GOOD), -1, 2, 4, "row count"),
    (bad_bytes([[3, 1], [0, 4]], *GOOD[1:]), 2, 2, 4, "row 1 has class index 4, outside [0, 4)"),
    (bad_bytes([[3, 1], [-1, 2]], *GOOD[1:]), 2, 2, 4, "class index -1"),
    (bad_bytes([[3, 1], [2, 2]], *GOOD[1:]), 2, 2, 4, "row 1 repeats class index 2"),
    (bad_bytes(GOOD[0], [[2.0, np.nan], [5.0, 4.0]], GOOD[2]), 2, 2, 4, "row 0 has a logit that is not finite"),
    (bad_bytes(GOOD[0], [[2.0, 1.0], [np.inf, 4.0]], GOOD[2]), 2, 2, 4, "row 1 has a logit"),
    (bad_bytes(GOOD[0], GOOD[1], [0.5, -np.inf]), 2, 2, 4, "rest value"),
    (bad_bytes([[0, 1]], [[1.0, 0.0]], [np.nan]), 1, 2, 2, "rest value"),   # k == classes: finite anyway
])
def test_from_bytes_refuses_bad_data_in_one_line(data, n, k, classes, word):
    assert TopK.from_bytes(bad_bytes(*GOOD), 2, 2, 4).n == 2
    with pytest.raises(ValueError) as e:
        TopK.from_bytes(data, n, k, classes)
    assert word in one_line(e.value)


@pytest.mark.parametrize("x, k, word", [
    (logits(2, 10), 0, "k=0"),
    (logits(2, 10), 11, "k=11"),
    (logits(1, 40000), 5, "classes"),
    (logits(1, 10)[0], 5, "2-D"),
    (logits(1, 10).unsqueeze(0), 5, "2-D"),
    ([[1.0, 2.0]], 1, "2-D"),
    (torch.tensor([[1.0, float("nan")], [1.0, 2.0]]), 1, "row 0"),
    (torch.tensor([[1.0, 2.0], [float("inf"), 2.0]]), 1, "row 1"),
    (torch.tensor([[1e6, 2.0]]), 1, "float16"),
    (torch.tensor([[1, 2]]), 1, "floating"),
])
def test_from_logits_refuses_bad_input_in_one_line(x, k, word):
    with pytest.raises(ValueError) as e:
        TopK.from_logits(x, k)
    assert word in one_line(e.value)


def test_entry_tensors_round_trip_and_malformed_ones_are_none():
    t = TopK.from_logits(logits(1, 1000, seed=5), 10)
    tensors = to_tensors("logits", t)
    assert {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()} == {
        "logits.topk.indices": (torch.int16, (10,)), "logits.topk.values": (torch.float16, (10,)),
        "logits.topk.rest": (torch.float16, (1,))}
    got = from_tensors("logits", tensors, 1000)
    assert same_bits(got.dense(), t.dense())
    with pytest.raises(ValueError):
        to_tensors("logits", TopK.from_logits(logits(2, 10), 3))

    def changed(key, value):
        return {**tensors, f"logits.topk.{key}": value}
    idx = tensors["logits.topk.indices"]
    for bad in ({}, {k: v for k, v in tensors.items() if not k.endswith("rest")},
                changed("indices", idx.long()), changed("values", tensors["logits.topk.values"].float()),
                changed("rest", torch.zeros(2, dtype=torch.float16)), changed("indices", idx[:5]),
                changed("indices", idx.clone().fill_(3)),
                changed("indices", idx.clone().index_fill_(0, torch.tensor(0), 1000)),
                changed("values", tensors["logits.topk.values"].clone().fill_(float("nan"))),
                changed("rest", [0.0]), "not a dict"):
        assert from_tensors("logits", bad, 1000) is None
    assert from_tensors("logits", tensors, int(idx.max())) is None   # its largest index is then out of range
    assert from_tensors("other", tensors, 1000) is None
    assert from_tensors("logits", tensors, 0) is None and from_tensors("logits", tensors, 40000) is None


# ---------------------------------------------------------------- the answer store's compact layout

def entry(k: int = 10, classes: int = 1000, recipe=UNMIXED, run: int = 0xDEADBEEF, step: int = 123_456,
          seed: int = 6) -> Entry:
    return Entry({"recipe": list(recipe), "run": run, "step": step},
                 to_tensors("logits", TopK.from_logits(logits(1, classes, seed=seed), k)))


def assert_same(got: Entry, want: Entry) -> None:
    assert got.header == want.header
    assert set(got.tensors) == set(want.tensors)
    for key, t in want.tensors.items():
        g = got.tensors[key]
        assert g.dtype == t.dtype and g.shape == t.shape
        assert torch.equal(g.view(torch.uint8), t.contiguous().view(torch.uint8)), key


def test_compact_layout_for_an_unmixed_view_with_a_top_k_answer():
    e = entry()
    data = encode(e)
    print(f"compact entry at K=10: {len(data)} bytes")
    assert len(data) == 64 and data[0] == 0xB1   # tag | flip
    assert struct.unpack_from("<hhHHII", data, 1) == (-2, 3, 28, 28, 7, 0xDEADBEEF)
    assert int.from_bytes(data[17:20], "little") == 123_456
    assert_same(decode(data), e)
    assert_same(decode(bytearray(data)), e)
    assert_same(decode(memoryview(data)), e)
    for k in (1, 100, 1000):   # any K: 4K + 24 bytes
        e = entry(k=k, recipe=[0, 0, 0, 1, 65535, 0, -1, 0, 0, 0, 0, 0, 0], run=2**32 - 1, step=2**24 - 1)
        data = encode(e)
        assert len(data) == 4 * k + 24 and data[0] == 0xB0
        assert_same(decode(data), e)
    # The order of the header's keys and the tensors does not matter.
    e = entry()
    e2 = Entry({"step": e.header["step"], "run": e.header["run"], "recipe": e.header["recipe"]},
               dict(reversed(list(e.tensors.items()))))
    assert encode(e2) == encode(e)


def mixed(recipe, **changes):
    return entry(recipe=recipe, **changes)


@pytest.mark.parametrize("e", [
    pytest.param(mixed([7, 0, 0, 28, 28, 0, 3, 0, 0, 28, 28, 0, 1048576000]), id="mixed view"),
    pytest.param(mixed([7, 0, 0, 28, 28, 0, -1, 0, 0, 0, 0, 0, -2**31]), id="mix bits of -0.0"),
    pytest.param(mixed([7, 0, 0, 28, 28, 0, -1, 0, 0, 0, 0, 1, 0]), id="partner field set"),
    pytest.param(mixed([7, 0, 0, 28, 28, True, -1, 0, 0, 0, 0, 0, 0]), id="flip a bool"),
    pytest.param(mixed([7, 0, 0, 28, 28, 2, -1, 0, 0, 0, 0, 0, 0]), id="flip 2"),
    pytest.param(mixed([7, 0, 0, 0, 28, 0, -1, 0, 0, 0, 0, 0, 0]), id="height 0"),
    pytest.param(mixed([7, 2**15, 0, 28, 28, 0, -1, 0, 0, 0, 0, 0, 0]), id="top past int16"),
    pytest.param(mixed([7, 0, 0, 28, 2**16, 0, -1, 0, 0, 0, 0, 0, 0]), id="width past uint16"),
    pytest.param(mixed([2**32, 0, 0, 28, 28, 0, -1, 0, 0, 0, 0, 0, 0]), id="sample past uint32"),
    pytest.param(mixed([7, 0, 0, 28, 28, 0, -1, 0, 0, 0, 0, 0]), id="12 columns"),
    pytest.param(mixed([7, 0.5, 0, 28, 28, 0, -1, 0, 0, 0, 0, 0, 0]), id="a float in the recipe"),
    pytest.param(mixed(UNMIXED, run="0123456789abcdef"), id="run a hex string (replay's uuid)"),
    pytest.param(mixed(UNMIXED, run=2**32), id="run past uint32"),
    pytest.param(mixed(UNMIXED, step=2**24), id="step past uint24"),
    pytest.param(mixed(UNMIXED, step=-1), id="step negative"),
    pytest.param(Entry({"recipe": UNMIXED, "run": 1, "step": 2, "epoch": 3}, entry().tensors),
                 id="extra header key"),
    pytest.param(Entry({"recipe": UNMIXED, "run": 1}, entry().tensors), id="no step"),
    pytest.param(Entry({"recipe": UNMIXED, "run": 1, "step": 2}, {"logits": logits(1, 1000)[0].half()}),
                 id="dense logits"),
    pytest.param(Entry({"recipe": UNMIXED, "run": 1, "step": 2}, {**entry().tensors, "x": torch.zeros(1)}),
                 id="extra tensor"),
    pytest.param(Entry({"recipe": UNMIXED, "run": 1, "step": 2},
                       to_tensors("features", TopK.from_logits(logits(1, 100), 10))), id="another key's top-k"),
    pytest.param(Entry({"recipe": UNMIXED, "run": 1, "step": 2},
                       {**entry().tensors, "logits.topk.indices": entry().tensors["logits.topk.indices"].int()}),
                 id="indices int32"),
    pytest.param(Entry({"recipe": UNMIXED, "run": 1, "step": 2},
                       {**entry().tensors, "logits.topk.indices": torch.zeros(10, dtype=torch.int16)}),
                 id="repeated index"),
    pytest.param(Entry({"recipe": UNMIXED, "run": 1, "step": 2},
                       {**entry().tensors, "logits.topk.rest": torch.tensor([float("inf")]).half()}),
                 id="rest not finite"),
    pytest.param(Entry({"recipe": UNMIXED, "run": 1, "step": 2},
                       {**entry().tensors, "logits.topk.rest": torch.zeros(1, 1).half()}), id="rest 2-D"),
])
def test_kda1_for_every_entry_the_compact_layout_cannot_hold(e):
    data = encode(e)
    assert data[:4] == b"KDA1"
    assert_same(decode(data), e)


def test_kda1_holds_int16_tensors():
    x = torch.tensor([[-32768, 32767, 0], [1, -1, 1207]], dtype=torch.int16)
    data = encode(Entry({"a": 1}, {"x": x, "y": x.t()}))
    assert data[:4] == b"KDA1"
    got = decode(data)
    assert got.tensors["x"].dtype == torch.int16 and torch.equal(got.tensors["x"], x)
    assert torch.equal(got.tensors["y"], x.t())


def forge_compact(body: bytes) -> bytes:
    import binascii
    return body + struct.pack("<H", binascii.crc_hqx(body, 0xFFFF))


@pytest.mark.parametrize("change, word", [
    (lambda b: b[:-1], "bytes"),
    (lambda b: b + b"\x00", "bytes"),
    (lambda b: b[:1] + struct.pack("<hhHH", 0, 0, 0, 28) + b[9:], "empty"),
    (lambda b: b[:20] + struct.pack("<h", -5) + b[22:], "class index -5"),
    (lambda b: b[:20] + struct.pack("<h", 32767) + b[22:], "class index 32767"),
    (lambda b: b[:20] + b[22:24] + b[22:], "repeats class index"),
    (lambda b: b[:40] + np.array(np.nan, "<f2").tobytes() + b[42:], "not finite"),
    (lambda b: b[:60] + np.array(-np.inf, "<f2").tobytes(), "rest value"),
    (lambda b: b[:20], "bytes"),
])
def test_decode_refuses_a_forged_compact_entry_with_a_good_checksum(change, word):
    body = encode(entry())[:-2]
    with pytest.raises(DamagedEntry) as e:
        decode(forge_compact(change(body)))
    assert word in one_line(e.value)


def test_decode_refuses_damaged_compact_entries_never_with_another_error():
    rng = random.Random(0)
    for k in (10, 100):
        valid = encode(entry(k=k))
        assert valid[0] in (0xB0, 0xB1)
        for cut in range(len(valid)):
            try:
                assert isinstance(decode(valid[:cut]), Entry)   # only when the 16-bit check misses
            except DamagedEntry as e:
                one_line(e)
        for i in range(len(valid)):   # every change within one byte is a burst the CRC-16 always catches
            damaged = bytearray(valid)
            damaged[i] ^= rng.randrange(1, 256)
            with pytest.raises(DamagedEntry) as e:
                decode(bytes(damaged))
            one_line(e.value)
        for _ in range(300):
            damaged = bytearray(valid)
            for _ in range(rng.randrange(2, 6)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            try:
                assert isinstance(decode(bytes(damaged)), Entry)
            except DamagedEntry as e:
                one_line(e)
        for _ in range(300):   # junk after a compact tag
            junk = bytes([0xB0 | rng.randrange(2)]) + rng.randbytes(rng.randrange(80))
            for data in (junk, forge_compact(junk)):
                try:
                    assert isinstance(decode(data), Entry)
                except DamagedEntry as e:
                    one_line(e)


def test_from_many_checks_and_rebuilds_a_read_at_once():
    """A replayed step's entries are rebuilt as one batch; a malformed one is dropped, never raised."""
    from common.topk import from_many

    x = torch.randn(5, 10, generator=torch.Generator().manual_seed(3))
    many = [to_tensors("logits", TopK.from_logits(x[i:i + 1], 3)) for i in range(5)]
    many[1] = dict(many[1], **{"logits.topk.indices": torch.tensor([0, 1, 10], dtype=torch.int16)})  # out of range
    many[2] = {"logits.topk.values": many[2]["logits.topk.values"]}                                     # parts missing
    many[3] = dict(many[3], **{"logits.topk.rest": torch.tensor([float("nan")], dtype=torch.float16)})
    answers, ok = from_many("logits", many, 10)
    assert ok == [True, False, False, False, True]
    assert torch.equal(answers.dense(), TopK.from_logits(x[[0, 4]], 3).dense())
    assert from_many("logits", [many[1]], 10) == (None, [False])
    assert from_many("logits", [many[0]], 2)[1] == [False]                      # K = 3 > 2 classes
