"""``TeacherClient.submit``: futures of teacher answers from every kind of teacher, against real servers.

Several threads submitting at once get their own right answers and the client's counters stay exact
(equal to the server's own count); a batch over the server's max batch comes back in order; a future
for a teacher that is gone ends in ``TeacherUnavailable`` within --teacher-max-wait; the time counted
as waiting is the time the caller was blocked, not the teacher's service time.
"""
import threading
import time
from concurrent.futures import Future

import pytest
import torch

from student_trainer.teachers import ServerStats, TeacherUnavailable, connect
from teacher_server.server import build_server


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def server(random_teacher):
    """A fresh real gRPC server (its counts start at 0) with max batch 8, so batches are chunked."""
    srv, servicer, port = build_server(random_teacher, host="127.0.0.1", port=0, max_batch=8)
    yield f"grpc://127.0.0.1:{port}", servicer, srv
    srv.stop(grace=None).wait()


def test_concurrent_submits_get_their_own_answers_and_exact_counts(server, random_teacher):
    url, servicer, _ = server
    sizes = {thread: [1 + (7 * thread + 5 * i) % 20 for i in range(5)] for thread in range(4)}  # 1..20 images
    errors = []
    with connect(url, wire_dtype="float32") as client:

        def ask(thread: int) -> None:
            try:
                futures = [(client.submit(_images(n, 100 * thread + i)), n, 100 * thread + i)
                           for i, n in enumerate(sizes[thread])]  # all in flight, then collected
                for future, n, seed in futures:
                    assert isinstance(future, Future)
                    want, _ = random_teacher.forward(_images(n, seed), ["logits"])
                    got = future.result(timeout=60)["logits"]
                    assert got.shape == (n, 10) and torch.allclose(got, want["logits"], atol=1e-5), (thread, seed)
            except Exception as e:  # reported below, with the thread that saw it
                errors.append((thread, e))

        threads = [threading.Thread(target=ask, args=(t,)) for t in sizes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        c = client.counters.as_dict()
        server_count = client.server_stats()
    all_sizes = [n for ns in sizes.values() for n in ns]
    chunks = sum(-(-n // 8) for n in all_sizes)  # each batch in chunks of at most 8
    assert c["images"] == sum(all_sizes) == server_count.images
    assert c["requests"] == chunks == server_count.requests
    assert (c["bytes_sent"], c["bytes_received"]) == (server_count.bytes_in, server_count.bytes_out)
    assert servicer.counters.snapshot()["failed_requests"] == 0


def test_a_batch_over_the_max_batch_comes_back_in_order(server, random_teacher):
    url, servicer, _ = server
    x = _images(45, 7)  # chunks of 8, 8, 8, 8, 8, 5, in flight together
    names = ["logits", *random_teacher.feature_names[:2]]
    with connect(url, wire_dtype="float32") as client:
        got = client.submit(x, outputs=names).result(timeout=60)
        assert (client.counters.requests, client.counters.images) == (6, 45)
    want, _ = random_teacher.forward(x, names)
    for name in names:
        assert got[name].shape == want[name].shape
        assert torch.allclose(got[name], want[name], atol=1e-5), name
    assert servicer.counters.snapshot()["requests"] == 6


def test_waiting_counts_only_the_time_the_caller_was_blocked(grpc_teacher):
    url, servicer = grpc_teacher
    x = _images(256, 3)  # four chunks of 64: a tenth of a second or more of forward passes on the server

    def forward_seconds(images: int) -> float:
        """The server's forward seconds once it has recorded ``images`` images (it records just after replying)."""
        deadline = time.monotonic() + 10
        while servicer.counters.snapshot()["images"] < images and time.monotonic() < deadline:
            time.sleep(0.01)
        return servicer.counters.snapshot()["forward_seconds"]

    with connect(url) as client:
        start_images = servicer.counters.snapshot()["images"]
        before = forward_seconds(start_images)
        future = client.submit(x)
        deadline = time.monotonic() + 60
        while not future.done():  # the caller does other work meanwhile (here: nothing)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.counters.wait_seconds == 0.0  # not blocked yet
        assert future.result()["logits"].shape == (256, 10)
        served = forward_seconds(start_images + 256) - before
        assert 0 <= client.counters.wait_seconds < served / 10  # blocked only to pick up an answer already there
        waited, before = client.counters.wait_seconds, forward_seconds(start_images + 256)
        client.infer(x)  # blocking: the caller waits through the teacher's work
        served = forward_seconds(start_images + 512) - before
        assert client.counters.wait_seconds - waited > served / 2


def test_a_future_for_a_stopped_server_ends_in_teacher_unavailable_within_max_wait(server):
    url, _, srv = server
    with connect(url, max_wait=2) as client:
        client.describe()
        srv.stop(grace=None).wait()
        start = time.monotonic()
        future = client.submit(_images(20, 1))  # three chunks, each retried within its own wait
        assert time.monotonic() - start < 1  # returns at once, long before the 2 s of retries are up
        with pytest.raises(TeacherUnavailable) as err:
            future.result(timeout=60)
        elapsed = time.monotonic() - start
        assert 2 <= elapsed < 2 + 5 + 3  # the limit, at most one backoff more, and some slack
        assert client.counters.images == 0 and client.counters.requests == 0
    message = str(err.value)
    assert "\n" not in message and f"teacher at {url} gave no answer to Infer" in message
    assert "--teacher-max-wait, is 2 s" in message


def test_an_in_process_teacher_answers_submits_from_several_threads(tmp_path):
    from common.checkpoint import make_checkpoint, save_checkpoint
    from common.models import build_model
    from common.teacher_model import load_teacher

    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=3)
    path = save_checkpoint(make_checkpoint(model, arch="resnet8", num_classes=10, input_shape=(3, 32, 32)),
                           tmp_path / "teacher.pt")
    reference = load_teacher(str(path))
    with connect(f"local:{path}") as client:
        futures = {}
        threads = [threading.Thread(target=lambda s=s: futures.__setitem__(s, client.submit(_images(5 + s, s))))
                   for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for seed, future in futures.items():
            want, _ = reference.forward(_images(5 + seed, seed), ["logits"])
            assert torch.allclose(future.result(timeout=60)["logits"], want["logits"], atol=1e-5)
        stats: ServerStats = client.server_stats()
        assert client.counters.images == stats.images == 5 + 6 + 7 + 8
        assert client.counters.requests == stats.requests == 4


def test_a_triton_future_for_a_stopped_server_ends_in_teacher_unavailable(tmp_path):
    from tests.test_triton import _stop, triton_unavailable
    from tests.test_triton_reliability import start_life

    reason = triton_unavailable()
    if reason:
        pytest.skip(reason)
    from teacher_server.triton_backend import free_port

    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    proc = start_life(tmp_path, "triton", ports)
    try:
        url = f"triton://127.0.0.1:{ports['grpc']}/teacher?metrics_port={ports['metrics']}"
        with connect(url, max_wait=2) as client:
            first = [client.submit(_images(3, s)) for s in range(3)]  # three in flight at once
            assert [f.result(timeout=60)["logits"].shape for f in first] == [(3, 10)] * 3
            assert (client.counters.requests, client.counters.images) == (3, 9)
            assert _stop(proc) == 0
            start = time.monotonic()
            future = client.submit(_images(3, 9))
            with pytest.raises(TeacherUnavailable) as err:
                future.result(timeout=60)
            assert 2 <= time.monotonic() - start < 2 + 5 + 3
            assert (client.counters.requests, client.counters.images) == (3, 9)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    message = str(err.value)
    assert "\n" not in message
    assert f"teacher at triton://127.0.0.1:{ports['grpc']}/teacher gave no answer to ModelInfer" in message


def test_the_first_chunk_error_fails_the_batch_and_the_chunks_not_sent_are_dropped():
    from concurrent.futures import ThreadPoolExecutor

    from student_trainer.teachers.chunks import ask_in_chunks

    asked = []

    def ask(chunk, outputs, views):
        asked.append(int(chunk[0, 0]))
        if int(chunk[0, 0]) == 2:
            raise ValueError("chunk 2 refused")
        return {"logits": chunk.clone()}

    with ThreadPoolExecutor(1) as pool:  # one at a time: chunks 3 and 4 are still queued when 2 fails
        images = torch.arange(10, dtype=torch.float32).div(2).floor().reshape(10, 1)  # chunk k of 2 rows holds k
        answer = ask_in_chunks(pool, ask, images, ["logits"], 2, Future(), dropped=lambda: AssertionError())
        with pytest.raises(ValueError, match="chunk 2 refused"):
            answer.result(timeout=10)
        assert asked == [0, 1, 2]
        whole = ask_in_chunks(pool, lambda c, o, v: {"logits": c * 10}, images, ["logits"], 3, Future(),
                              dropped=lambda: AssertionError())
        assert torch.equal(whole.result(timeout=10)["logits"], images * 10)  # four chunks, back in order
