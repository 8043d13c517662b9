"""Many students, one teacher: the gRPC server gathers concurrent requests into one forward.

Real servers on localhost, real channels, real trainer processes; every answer is
checked against the in-process forward of the request's own images.
"""
import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import torch
from torch import nn

from common import codec
from common.teacher_model import TeacherModel
from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc
from student_trainer.teachers import connect
from teacher_server.batcher import Batcher, BatcherClosed
from teacher_server.server import build_server
from tests.conftest import FailsOnLargeValues, train_args

ROOT = Path(__file__).resolve().parents[1]
TOL = dict(atol=1e-4, rtol=1e-4)  # float32 on the wire; only batch-size-dependent kernel rounding remains


def _images(n, seed, shape=(3, 32, 32)):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


@contextmanager
def serving(teacher, **kw):
    """A fresh in-process server (its counts start at 0) and a raw stub on it."""
    server, servicer, port = build_server(teacher, port=0, **kw)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.TeacherStub(channel), servicer, port
    finally:
        channel.close()
        server.stop(grace=None).wait()


def _request(images, wire="float32", **kw):
    return pb.InferRequest(images=codec.encode(images, wire), output_dtype=pb.FLOAT32, **kw)


class Slow(nn.Module):
    """A real (tiny) model whose forward takes ``seconds``: keeps the batcher busy while requests queue."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.fc = nn.Linear(3 * 4 * 4, 2)
        self.entered = threading.Event()  # set by each forward as it starts

    def forward(self, x):
        self.entered.set()
        time.sleep(self.seconds)
        return self.fc(x.flatten(1))


def _toy(model):
    return TeacherModel(model.eval(), "toy", "toy", (3, 4, 4), 2, torch.device("cpu"), torch.float32, 0.0)


KEYS = [["logits"], ["logits", "stage3.pool"], ["stage2"], ["stage1.attention", "logits"], ["pool"],
        ["stage3", "logits.pool"]]


def test_concurrent_requests_from_threads_are_gathered_and_each_gets_its_own_answer(random_teacher):
    sizes = {t: [1 + (3 * t + 5 * i) % 9 for i in range(4)] for t in range(len(KEYS))}  # 1..9 images
    got, errors = {}, []
    with serving(random_teacher, max_batch=64, queue_delay_us=20_000) as (_, servicer, port):
        start = threading.Barrier(len(KEYS))

        def student(t: int) -> None:
            try:
                with connect(f"grpc://127.0.0.1:{port}", wire_dtype="float32", client_id=f"s{t}") as client:
                    client.describe()
                    start.wait(timeout=60)
                    for i, n in enumerate(sizes[t]):
                        got[t, i] = client.infer(_images(n, 100 * t + i), outputs=KEYS[t])
            except Exception as e:  # reported below
                errors.append((t, e))

        threads = [threading.Thread(target=student, args=(t,)) for t in sizes]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        assert not errors, errors
        s = servicer.counters.snapshot()
    requests = sum(len(v) for v in sizes.values())
    assert (s["requests"], s["images"], s["failed_requests"]) == (requests, sum(map(sum, sizes.values())), 0)
    assert s["forward_images"] == s["images"]
    assert s["forwards"] < requests  # gathered: more than one request per forward on average
    assert s["mean_batch_images"] == pytest.approx(s["images"] / s["forwards"])
    assert s["mean_batch_images"] > s["images"] / requests
    assert 0 < s["busy_seconds"] <= s["uptime_seconds"]
    # each request counts its share of its batch's forward: the shares add up to the forwards' own time
    assert 0.5 * s["busy_seconds"] <= s["forward_seconds"] <= s["busy_seconds"] + 1e-6
    for (t, i), answer in got.items():
        n = sizes[t][i]
        want, _ = random_teacher.forward(_images(n, 100 * t + i), KEYS[t])
        assert sorted(answer) == sorted(KEYS[t]), (t, i)
        for key in KEYS[t]:
            assert answer[key].shape == want[key].shape and answer[key].shape[0] == n, (t, i, key)
            assert torch.allclose(answer[key], want[key], **TOL), (t, i, key)


def test_a_full_batch_runs_at_once_and_mixed_wire_dtypes_share_it(random_teacher):
    """Three requests (float32, float16, raw uint8) fill max batch 12: one forward, no 5 s wait."""
    wires = ["float32", "float16", "uint8"]
    xs = [_images(4, 7 + i) for i in range(3)]
    xs[2] = (xs[2].abs() * 50).clamp(0, 255).round().to(torch.uint8)  # raw byte values, no scale
    with serving(random_teacher, max_batch=12, queue_delay_us=5_000_000) as (stub, servicer, _):
        start = time.monotonic()
        calls = [stub.Infer.future(_request(x, w, outputs=["logits", "stage2.pool"], request_id=w), timeout=60)
                 for x, w in zip(xs, wires)]
        replies = [c.result() for c in calls]
        elapsed = time.monotonic() - start
        s = servicer.counters.snapshot()
    assert elapsed < 4.0, "a full batch waited for the queue delay"
    assert (s["forwards"], s["forward_images"], s["requests"]) == (1, 12, 3)
    for x, w, reply in zip(xs, wires, replies):
        assert reply.request_id == w
        sent = codec.decode(codec.encode(x, w))  # exactly what the server received
        want, _ = random_teacher.forward(sent, ["logits", "stage2.pool"])
        for key in ("logits", "stage2.pool"):
            assert torch.allclose(codec.decode(reply.outputs[key]), want[key], **TOL), (w, key)


def test_a_bad_request_among_good_concurrent_ones_never_joins_their_batch(random_teacher):
    good = [_images(3, s) for s in range(3)]
    nan = torch.full((3, 3, 32, 32), float("nan"))
    with serving(random_teacher, max_batch=9, queue_delay_us=5_000_000) as (stub, servicer, _):
        calls = [stub.Infer.future(_request(x, request_id=f"good{i}"), timeout=60) for i, x in enumerate(good[:2])]
        bad = stub.Infer.future(_request(nan, request_id="bad"), timeout=60)
        wrong_key = stub.Infer.future(_request(good[0], outputs=["nope"], request_id="bad2"), timeout=60)
        calls.append(stub.Infer.future(_request(good[2], request_id="good2"), timeout=60))
        for call in (bad, wrong_key):
            with pytest.raises(grpc.RpcError) as err:
                call.result()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        replies = [c.result() for c in calls]  # 3 x 3 good images fill max batch 9: one forward
        s = servicer.counters.snapshot()
    assert "NaN" in bad.exception().details() and "outputs must be" in wrong_key.exception().details()
    assert (s["forwards"], s["forward_images"], s["requests"], s["failed_requests"]) == (1, 9, 3, 2)
    for i, (x, reply) in enumerate(zip(good, replies)):
        assert reply.request_id == f"good{i}"
        want, _ = random_teacher.forward(x, ["logits"])
        assert torch.allclose(codec.decode(reply.outputs["logits"]), want["logits"], **TOL)


def test_a_request_over_max_batch_is_refused_and_the_server_goes_on(random_teacher):
    with serving(random_teacher, max_batch=8, queue_delay_us=1000) as (stub, servicer, _):
        with pytest.raises(grpc.RpcError) as err:
            stub.Infer(_request(_images(9, 0)))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max batch 8" in err.value.details()
        reply = stub.Infer(_request(_images(8, 1)))
        assert list(reply.outputs["logits"].shape) == [8, 10]
        s = servicer.counters.snapshot()
    assert (s["forwards"], s["forward_images"], s["failed_requests"]) == (1, 8, 1)


def test_a_model_error_fails_only_the_requests_of_its_batch():
    with serving(_toy(FailsOnLargeValues()), max_batch=4, queue_delay_us=5_000_000) as (stub, servicer, _):
        poisoned = [stub.Infer.future(_request(torch.full((2, 3, 4, 4), v), request_id=f"p{v}"), timeout=60)
                    for v in (1.0, 1e3)]  # fill max batch 4 together: one forward, which raises
        for call in poisoned:
            with pytest.raises(grpc.RpcError) as err:
                call.result()
            assert err.value.code() == grpc.StatusCode.INTERNAL and "model error on request" in err.value.details()
        fine = [stub.Infer.future(_request(torch.ones(2, 3, 4, 4), request_id=f"f{i}"), timeout=60)
                for i in range(2)]
        assert [list(c.result().outputs["logits"].shape) for c in fine] == [[2, 2], [2, 2]]
        s = servicer.counters.snapshot()
    assert (s["forwards"], s["requests"], s["failed_requests"]) == (2, 2, 2)


def test_queue_delay_0_runs_what_is_queued_without_waiting():
    """While one forward runs, two requests queue; with no delay they then run together, at once."""
    slow = Slow(0.6)
    teacher = _toy(slow)
    slow.entered.clear()  # (set by the shape probe)
    with serving(teacher, max_batch=64, queue_delay_us=0) as (stub, servicer, _):
        first = stub.Infer.future(_request(torch.ones(1, 3, 4, 4)), timeout=60)
        assert slow.entered.wait(30)  # the first is in its forward now, alone
        queued = [stub.Infer.future(_request(torch.ones(n, 3, 4, 4)), timeout=60) for n in (2, 3)]
        for c in (first, *queued):
            c.result()
        s = servicer.counters.snapshot()
    assert (s["forwards"], s["forward_images"], s["requests"]) == (2, 6, 3)
    assert s["mean_batch_images"] == 3.0


def test_stopping_with_requests_queued_answers_or_fails_each_and_never_hangs():
    server, servicer, port = build_server(_toy(Slow(0.5)), port=0, max_batch=2, queue_delay_us=0)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.TeacherStub(channel)
        calls = [stub.Infer.future(_request(torch.ones(2, 3, 4, 4), request_id=str(i)), timeout=60)
                 for i in range(6)]  # each fills a batch: one runs, five queue
        deadline = time.monotonic() + 30
        while servicer.batcher.queued() < 3:
            assert time.monotonic() < deadline, "the requests never queued"
            time.sleep(0.01)
        start = time.monotonic()
        assert server.stop(grace=None).wait(timeout=30), "stop hung"
        outcomes = []
        for c in calls:
            try:
                c.result(timeout=30)
                outcomes.append("OK")
            except grpc.RpcError as e:
                outcomes.append(e.code().name)
        assert time.monotonic() - start < 10
    assert servicer.batcher.closed and servicer.batcher.queued() == 0
    assert set(outcomes) <= {"OK", "CANCELLED", "UNAVAILABLE"} and len(outcomes) == 6, outcomes
    assert outcomes.count("OK") <= 1  # at most the batch that was running when the server stopped


def test_the_batcher_itself_closes_with_every_future_done():
    """Directly: one batch running, others queued; close answers the running one and fails the rest."""
    teacher = _toy(Slow(0.3))
    batcher = Batcher(teacher.forward, max_batch=1, queue_delay=0.0)
    futures = [batcher.submit(torch.ones(1, 3, 4, 4), ["logits"]) for _ in range(4)]
    time.sleep(0.1)  # the first is running
    batcher.close(timeout=10)
    assert all(f.done() for f in futures)
    assert futures[0].result().outputs["logits"].shape == (1, 2)
    for f in futures[1:]:
        assert isinstance(f.exception(), BatcherClosed)
    with pytest.raises(BatcherClosed):
        batcher.submit(torch.ones(1, 3, 4, 4), ["logits"])


def test_per_client_stats_are_exact_with_two_client_ids(random_teacher):
    plan = {"alice": [2, 5, 7, 1], "bob": [4, 4, 3]}
    counts, errors = {}, []
    with serving(random_teacher, max_batch=64, queue_delay_us=10_000) as (stub, servicer, port):
        for client_id in plan:  # register before any traffic: zeros
            s = stub.Stats(pb.StatsRequest(client_id=client_id))
            assert (s.client_id, s.images, s.requests) == (client_id, 0, 0)

        def student(client_id):
            try:
                with connect(f"grpc://127.0.0.1:{port}", client_id=client_id) as client:
                    for n in plan[client_id]:
                        client.infer(_images(n, n))
                    counts[client_id] = (client.counters.as_dict(), client.server_stats())
            except Exception as e:  # reported below
                errors.append((client_id, e))

        threads = [threading.Thread(target=student, args=(c,)) for c in plan]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        assert not errors, errors
        total = stub.Stats(pb.StatsRequest(per_client=True))
        with pytest.raises(grpc.RpcError) as err:
            stub.Stats(pb.StatsRequest(client_id="not a valid id"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for client_id, (c, server) in counts.items():
        assert server.source == "grpc Stats (this client's)"
        assert (server.images, server.requests) == (c["images"], c["requests"]) == (sum(plan[client_id]),
                                                                                    len(plan[client_id]))
        assert (server.bytes_in, server.bytes_out) == (c["bytes_sent"], c["bytes_received"])
    assert total.client_id == "" and total.images == 26 and total.requests == 7
    listed = {c.client_id: c for c in total.clients}
    assert sorted(listed) == ["alice", "bob"]
    assert sum(c.images for c in listed.values()) == total.images
    assert sum(c.bytes_in for c in listed.values()) == total.bytes_in
    assert sum(c.forward_seconds for c in listed.values()) == pytest.approx(total.forward_seconds)


def test_two_trainers_sharing_one_teacher_each_get_their_own_server_counts(grpc_teacher, tmp_path):
    """Two real trainer processes at once against one in-process server: each delta is its own."""
    url, servicer = grpc_teacher
    before = servicer.counters.snapshot()
    runs = {"kd": ["--method", "kd", "--batch-size", "16", "--train-size", "640"],
            "unix": ["--method", "unix", "--batch-size", "16", "--k", "12", "--train-size", "960"]}
    procs = {name: subprocess.Popen([sys.executable, "-m", "student_trainer", "--teacher-url", url,
                                     "--client-id", f"trainer-{name}", *train_args(tmp_path / name, *flags)],
                                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name, flags in runs.items()}
    both_running = False  # seen on the server: both had sent some images, neither all of them yet
    try:
        while any(p.poll() is None for p in procs.values()):
            seen = servicer.counters.clients()
            ours = [seen.get(f"trainer-{name}", {}).get("images", 0) for name in runs]
            both_running |= all(ours) and all(p.poll() is None for p in procs.values())
            time.sleep(0.05)
        for name, p in procs.items():
            assert p.wait() == 0, (name, p.stderr.read()[-3000:])
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    after = servicer.counters.snapshot()
    summaries = {name: json.loads((tmp_path / name / "summary.json").read_text()) for name in runs}
    assert both_running, "the two trainers did not overlap: the test would not show anything"
    for name, s in summaries.items():
        assert s["server_images_delta"] == s["teacher_images"] > 0, name
        assert s["server_requests_delta"] == s["teacher_requests"], name
        assert s["server_bytes_in_delta"] == s["bytes_sent"], name
        assert "this client's" in s["server_stats_source"], name
    assert summaries["kd"]["teacher_images"] == 640 and summaries["unix"]["teacher_images"] == 60 * 12
    assert sum(s["server_images_delta"] for s in summaries.values()) == after["images"] - before["images"]
