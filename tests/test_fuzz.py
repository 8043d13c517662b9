"""Property-based fuzzing of Infer: malformed requests get a clean code, the server keeps answering.

Each generated request starts valid and gets one to three mutations, each of
which alone makes it malformed; the real server (in this process, real gRPC on
localhost, one channel) must answer INVALID_ARGUMENT or RESOURCE_EXHAUSTED, never
anything else, and a valid request afterwards must still get the right logits.
The same for requests that carry view recipes instead of images, and for bytes
that are no protobuf message at all (which must not flood the log).
"""
import collections
import logging
import math
import random
import struct
import time

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from google.protobuf.message import DecodeError
from hypothesis import strategies as st

from common import codec
from common.views import StoredImages, Views, render_views
from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc

SHAPE = (1, 8, 8)
MAX_BATCH = 4
EXAMPLES = 1000
RECIPE_EXAMPLES = 400
# The split the server renders recipes from: padded by 1, never flipped.
STORED = StoredImages(torch.randint(0, 256, (12, *SHAPE), dtype=torch.uint8,
                                    generator=torch.Generator().manual_seed(0)),
                      torch.arange(12) % 4, 1, False, (0.5,), (0.25,))
IA, RE = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
# Non-finite bit patterns per wire dtype (little-endian).
NONFINITE = {pb.FLOAT32: [struct.pack("<f", v) for v in (math.nan, math.inf, -math.inf)],
             pb.FLOAT16: [b"\x00\x7e", b"\x00\x7c", b"\x00\xfc"],
             pb.BFLOAT16: [b"\xc0\x7f", b"\x80\x7f", b"\x80\xff"]}


@pytest.fixture(scope="module")
def small_server():
    from common.teacher_model import load_teacher
    from teacher_server.recipes import ServedData
    from teacher_server.server import build_server

    teacher = load_teacher(arch="resnet8", num_classes=4, input_shape=SHAPE, seed=0)
    server, servicer, port = build_server(teacher, port=0, max_batch=MAX_BATCH, data=ServedData("fuzz", STORED))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield teacher, servicer, pb_grpc.TeacherStub(channel), channel
    channel.close()
    server.stop(grace=None).wait()


@st.composite
def valid_requests(draw, outputs_offered):
    n = draw(st.integers(1, MAX_BATCH))
    dtype = draw(st.sampled_from(sorted(codec.WIRE_DTYPES)))
    images = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    outputs = draw(st.lists(st.sampled_from(outputs_offered), unique=True, max_size=3))
    return pb.InferRequest(images=codec.encode(images, dtype), outputs=outputs,
                           request_id=draw(st.text(max_size=20)),
                           output_dtype=draw(st.sampled_from([0, *codec.WIRE_DTYPES.values()])))


def _set_shape(r, shape):
    del r.images.shape[:]
    r.images.shape.extend(shape)


def mutate(draw, r: pb.InferRequest, kind: str, limit: int) -> None:
    """Make ``r`` malformed in the way ``kind`` says (each kind alone is always malformed)."""
    img = r.images
    if kind == "no_images":
        r.ClearField("images")
    elif kind == "unknown_dtype":
        img.dtype = draw(st.one_of(st.integers(-2**31, -1), st.just(0), st.integers(5, 2**31 - 1)))
    elif kind == "wrong_rank":
        rank = draw(st.integers(0, 7).filter(lambda k: k != 4))
        _set_shape(r, draw(st.lists(st.integers(-2**40, 2**40), min_size=rank, max_size=rank)))
    elif kind == "wrong_image_shape":
        dims = draw(st.lists(st.integers(-5, 70), min_size=3, max_size=3).filter(lambda d: tuple(d) != SHAPE))
        _set_shape(r, [img.shape[0], *dims])
    elif kind == "empty_or_negative_batch":
        _set_shape(r, [draw(st.integers(-2**62, 0)), *SHAPE])
    elif kind == "batch_over_max":
        _set_shape(r, [draw(st.integers(MAX_BATCH + 1, 2**62)), *SHAPE])
    elif kind == "wrong_byte_count":
        delta = draw(st.integers(-len(img.data), 64).filter(lambda d: d != 0))
        img.data = img.data[:delta] if delta < 0 else img.data + bytes(delta)
    elif kind == "unknown_output":
        r.outputs.append(draw(st.text(max_size=30).filter(lambda s: s not in ("logits", "stem", "stage1",
                                                                              "stage2", "stage3", "pool"))))
    elif kind == "duplicate_output":
        r.outputs.extend(["logits", "logits"])
    elif kind == "unknown_output_dtype":
        r.output_dtype = draw(st.one_of(st.integers(-2**31, -1), st.integers(5, 2**31 - 1)))
    elif kind == "nonfinite_values":
        if img.dtype == pb.UINT8:
            img.scale = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        else:
            bad = draw(st.sampled_from(NONFINITE[img.dtype]))
            at = draw(st.integers(0, len(img.data) // len(bad) - 1)) * len(bad)
            img.data = img.data[:at] + bad + img.data[at + len(bad):]
    elif kind == "long_request_id":
        r.request_id = "x" * draw(st.integers(129, 5000))
    elif kind == "message_over_limit":
        img.data = bytes(limit + draw(st.integers(1, 4096)))
    else:
        raise AssertionError(kind)


# In the order they are applied: data before dtype and shape changes, removing the images last.
KINDS = ["nonfinite_values", "wrong_byte_count", "message_over_limit", "wrong_image_shape",
         "empty_or_negative_batch", "batch_over_max", "wrong_rank", "unknown_dtype", "unknown_output",
         "duplicate_output", "unknown_output_dtype", "long_request_id", "no_images"]
EXPECTED_ALONE = {kind: RE if kind in ("batch_over_max", "message_over_limit") else IA for kind in KINDS}


def test_malformed_requests_get_clean_errors_and_the_server_keeps_answering(small_server):
    teacher, servicer, stub, _ = small_server
    offered = ["logits", *teacher.feature_names]
    limit = servicer.max_message_bytes
    codes: collections.Counter = collections.Counter()
    kinds_seen: collections.Counter = collections.Counter()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        request = data.draw(valid_requests(offered))
        kinds = sorted(data.draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3, unique=True)),
                       key=KINDS.index)
        for kind in kinds:
            mutate(data.draw, request, kind, limit)
        with pytest.raises(grpc.RpcError) as err:
            stub.Infer(request, timeout=30)
        code = err.value.code()
        codes[code.name] += 1
        kinds_seen.update(kinds)
        assert code in (IA, RE), f"{kinds}: {code.name} {err.value.details()}"
        if len(kinds) == 1:
            assert code == EXPECTED_ALONE[kinds[0]], f"{kinds}: {code.name} {err.value.details()}"
        assert len(err.value.details() or "") < 400  # one readable line, even for huge inputs

    check()
    assert sum(codes.values()) >= EXAMPLES
    assert set(kinds_seen) == set(KINDS)
    print(f"fuzz: {sum(codes.values())} malformed requests, codes {dict(codes)}")

    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(7))
    ok = stub.Infer(pb.InferRequest(images=codec.encode(x, "float32"), request_id="after-fuzz"), timeout=30)
    want, _ = teacher.forward(x, ["logits"])
    assert ok.request_id == "after-fuzz"
    assert np.allclose(codec.decode(ok.outputs["logits"]).numpy(), want["logits"].numpy(), atol=1e-5)


# --- view recipes ----------------------------------------------------------------

@st.composite
def valid_recipe_requests(draw, outputs_offered):
    n = draw(st.integers(1, MAX_BATCH))
    rows = np.zeros((n, Views.COLUMNS), dtype=np.int64)
    per, (h, w) = Views.PER_VIEW, SHAPE[1:]
    rows[:, 0] = draw(st.lists(st.integers(0, len(STORED) - 1), min_size=n, max_size=n))
    crops = draw(st.lists(st.integers(-STORED.pad, STORED.pad), min_size=2 * n, max_size=2 * n))
    rows[:, 1:3] = np.array(crops).reshape(n, 2)
    rows[:, 3:5] = (h, w)
    if draw(st.booleans()):  # mixed with a partner, as UNIX's rows are
        rows[:, per] = draw(st.lists(st.integers(0, len(STORED) - 1), min_size=n, max_size=n))
        rows[:, per + 3:per + 5] = (h, w)
        mix = np.array(draw(st.lists(st.floats(0, 1, width=32), min_size=n, max_size=n)), dtype=np.float32)
        rows[:, -1] = mix.view(np.int32)
    else:
        rows[:, per] = -1
    outputs = draw(st.lists(st.sampled_from(outputs_offered), unique=True, max_size=3))
    render_dtype = draw(st.sampled_from([0, *codec.WIRE_DTYPES.values()]))
    return rows, pb.InferRequest(outputs=outputs, request_id=draw(st.text(max_size=20)),
                                 views=pb.ViewRecipes(render_dtype=render_dtype))


def _outside(lo: int, hi: int):
    return st.one_of(st.integers(-2**62, lo - 1), st.integers(hi + 1, 2**62))


def mutate_recipes(draw, rows: np.ndarray, r: pb.InferRequest, kind: str) -> np.ndarray:
    """Make the recipe request malformed in the way ``kind`` says (each kind alone always is)."""
    at = draw(st.integers(0, len(rows) - 1))
    if kind == "sample_out_of_range":
        rows[at, 0] = draw(_outside(0, len(STORED) - 1))
    elif kind == "crop_out_of_range":
        column = draw(st.sampled_from([1, 2, 3, 4]))
        low, high = (-STORED.pad, STORED.pad) if column < 3 else (SHAPE[column - 2],) * 2
        rows[at, column] = draw(_outside(low, high))
    elif kind == "flip_in_a_set_that_never_flips":
        rows[at, 5] = draw(st.integers(1, 2**62))
    elif kind == "mix_out_of_range":
        if rows[0, Views.PER_VIEW] < 0:  # give every row a partner first: an unmixed row's weight is never read
            rows[:, Views.PER_VIEW:-1] = rows[:, :Views.PER_VIEW] * (np.arange(Views.PER_VIEW) != 5)
        bad = draw(st.floats(allow_nan=True, allow_infinity=True, width=32).filter(lambda v: not 0 <= v <= 1))
        rows[at, -1] = np.array([bad], dtype=np.float32).view(np.int32)[0]
    elif kind == "partnered_and_unpartnered_rows":
        rows = np.concatenate([rows, rows[:1]])[-MAX_BATCH:] if len(rows) == 1 else rows
        rows[:, Views.PER_VIEW:-1] = rows[:, :Views.PER_VIEW] * (np.arange(Views.PER_VIEW) != 5)
        rows[0, Views.PER_VIEW] = -1
    elif kind == "rows_over_max_batch":
        rows = np.concatenate([rows] * (MAX_BATCH + 1))
    elif kind == "unknown_render_dtype":
        r.views.render_dtype = draw(st.one_of(st.integers(-2**31, -1), st.integers(5, 2**31 - 1)))
    elif kind == "images_too":
        r.images.CopyFrom(codec.encode(torch.zeros(len(rows), *SHAPE), "float32"))
    elif kind not in ("ragged_bytes", "no_rows"):
        raise AssertionError(kind)
    return rows


RECIPE_KINDS = ["sample_out_of_range", "crop_out_of_range", "flip_in_a_set_that_never_flips", "mix_out_of_range",
                "partnered_and_unpartnered_rows", "rows_over_max_batch", "unknown_render_dtype", "images_too",
                "ragged_bytes", "no_rows"]


def test_malformed_recipe_requests_get_clean_errors_and_the_server_keeps_answering(small_server):
    teacher, servicer, stub, _ = small_server
    offered = ["logits", *teacher.feature_names]
    codes: collections.Counter = collections.Counter()
    kinds_seen: collections.Counter = collections.Counter()

    @settings(max_examples=RECIPE_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        rows, request = data.draw(valid_recipe_requests(offered))
        kinds = sorted(data.draw(st.lists(st.sampled_from(RECIPE_KINDS), min_size=1, max_size=3, unique=True)),
                       key=RECIPE_KINDS.index)
        for kind in kinds:
            rows = mutate_recipes(data.draw, rows, request, kind)
        raw = rows.astype("<i8").tobytes()
        if "ragged_bytes" in kinds:
            cut = data.draw(st.integers(1, 71))
            raw = raw[:-cut] if data.draw(st.booleans()) and len(raw) > cut else raw + bytes(cut)
        request.views.rows = b"" if "no_rows" in kinds else raw
        with pytest.raises(grpc.RpcError) as err:
            stub.Infer(request, timeout=30)
        code = err.value.code()
        codes[code.name] += 1
        kinds_seen.update(kinds)
        assert code in (IA, RE), f"{kinds}: {code.name} {err.value.details()}"
        if len(kinds) == 1:
            assert code == (RE if kinds == ["rows_over_max_batch"] else IA), f"{kinds}: {err.value.details()}"
        assert len(err.value.details() or "") < 400

    check()
    assert set(kinds_seen) == set(RECIPE_KINDS)
    print(f"fuzz: {sum(codes.values())} malformed recipe requests, codes {dict(codes)}")

    h, w = SHAPE[1:]
    views = Views.from_array(np.array([[3, -1, 1, h, w, 0, 7, 0, 0, h, w, 0,
                                        np.array([0.25], np.float32).view(np.int32)[0]]]))
    ok = stub.Infer(pb.InferRequest(views=pb.ViewRecipes(rows=views.as_array().astype("<i8").tobytes()),
                                    request_id="after-fuzz"), timeout=30)
    want, _ = teacher.forward(render_views(STORED, views), ["logits"])
    assert ok.request_id == "after-fuzz"
    assert np.array_equal(codec.decode(ok.outputs["logits"]).numpy(), want["logits"].numpy())


GARBAGE = 50
REQUEST_TYPES = {"Infer": pb.InferRequest, "Describe": pb.DescribeRequest, "Stats": pb.StatsRequest}


def _garbage(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` (method, bytes) pairs, spread over the RPCs, whose bytes parse as no request of their method."""
    rng, found = random.Random(seed), []
    while len(found) < n:
        method = list(REQUEST_TYPES)[len(found) % len(REQUEST_TYPES)]
        data = rng.randbytes(rng.randrange(1, 64))
        try:
            REQUEST_TYPES[method].FromString(data)
        except DecodeError:
            found.append((method, data))
    return found


def _malformed_counted(servicer) -> float:
    return sum(servicer.metrics.registry.get_sample_value("unixkd_teacher_malformed_requests_total",
                                                          {"method": m}) or 0 for m in REQUEST_TYPES)


def test_bytes_that_are_no_request_are_refused_counted_and_logged_in_a_line_or_two(small_server, caplog):
    teacher, servicer, stub, channel = small_server
    before = _malformed_counted(servicer)
    with caplog.at_level(logging.INFO):
        for method, data in _garbage(GARBAGE):
            call = channel.unary_unary(f"/unixkd.teacher.v1.Teacher/{method}")  # no serializers: the raw bytes
            with pytest.raises(grpc.RpcError) as err:
                call(data, timeout=30)
            assert err.value.code() == IA, err.value.details()
            assert err.value.details() == f"the request's {len(data)} bytes are no unixkd.teacher.v1.{method}" \
                                          f"Request message"
        x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5))
        ok = stub.Infer(pb.InferRequest(images=codec.encode(x, pb.FLOAT32), request_id="after-garbage"), timeout=30)
    want, _ = teacher.forward(x, ["logits"])
    assert np.array_equal(codec.decode(ok.outputs["logits"]).numpy(), want["logits"].numpy())
    assert _malformed_counted(servicer) - before == GARBAGE
    lines = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert 1 <= len(lines) <= 2, lines
    assert lines[0].startswith("1 malformed request, to Infer (1) from ipv4:127.0.0.1:")
    assert "Traceback" not in caplog.text and "Exception deserializing" not in caplog.text


def test_malformed_calls_held_back_are_logged_together_once_the_interval_is_up(caplog):
    from prometheus_client import CollectorRegistry, Counter

    from teacher_server.malformed import MalformedLog

    malformed = MalformedLog(Counter("m", "m", ["method"], registry=CollectorRegistry()), interval=0.3)
    with caplog.at_level(logging.WARNING, logger="teacher_server"):
        for i in range(10):
            malformed.seen("Infer" if i < 8 else "Stats", f"ipv4:10.0.0.{i % 5}:1")
        assert len(caplog.records) == 1  # the first at once, the others held back
        deadline = time.monotonic() + 10
        while len(caplog.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        malformed.close()  # nothing left to log
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[1].startswith("9 malformed requests in the last 0.")
    assert "to Infer (7), Stats (2) from ipv4:10.0.0.1:1 (2), ipv4:10.0.0.2:1 (2), ipv4:10.0.0.3:1 (2) and 2 more" \
        in lines[1]
