"""A teacher that fails, goes away, comes back or is told to stop: real servers, real clients, real signals."""
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from common import codec
from common.checkpoint import load_checkpoint
from common.launch import start_teacher
from common.teacher_model import TeacherModel
from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc
from student_trainer.cli import main as train
from student_trainer.teachers import TeacherUnavailable, connect
from teacher_server.server import build_server
from tests.conftest import FailsOnLargeValues, train_args

ROOT = Path(__file__).resolve().parents[1]
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path: Path, name: str, *flags, port: int = 0) -> tuple[subprocess.Popen, int]:
    """``python -m teacher_server`` as its own process; returns once it listens."""
    log = (tmp_path / f"{name}.log").open("w")
    try:
        return start_teacher("--port", port, *flags, port_file=tmp_path / f"{name}.port", stdout=log,
                             cwd=ROOT, poll=0.05)
    except (ChildProcessError, TimeoutError) as e:
        pytest.fail(f"teacher_server did not start ({e}): {(tmp_path / f'{name}.log').read_text()}")


def stop_server(proc: subprocess.Popen, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


def wait_for_requests(port: int, n: int, trainer: subprocess.Popen, timeout: float = 120) -> None:
    """Block until the server on `port` has answered `n` requests, failing if the trainer died first."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.TeacherStub(channel)
        deadline = time.monotonic() + timeout
        while stub.Stats(pb.StatsRequest(), timeout=10).requests < n:
            assert trainer.poll() is None and time.monotonic() < deadline, trainer.communicate()
            time.sleep(0.02)


def test_a_model_error_is_internal_with_the_request_id_and_the_server_goes_on(caplog):
    teacher = TeacherModel(FailsOnLargeValues().eval(), "fragile", "fragile", (3, 4, 4), 2,
                           torch.device("cpu"), torch.float32, 0.0)
    server, servicer, port = build_server(teacher, port=0, max_batch=8)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.TeacherStub(channel)
            big = pb.InferRequest(images=codec.encode(torch.full((2, 3, 4, 4), 1e3)), request_id="req-77")
            with caplog.at_level(logging.ERROR, logger="teacher_server"), pytest.raises(grpc.RpcError) as err:
                stub.Infer(big)
            assert err.value.code() == grpc.StatusCode.INTERNAL
            assert "req-77" in err.value.details()
            assert "model error on request 'req-77'" in caplog.text and "numerical blow-up" in caplog.text
            ok = stub.Infer(pb.InferRequest(images=codec.encode(torch.ones(2, 3, 4, 4)), request_id="req-78"))
            assert ok.request_id == "req-78" and list(ok.outputs["logits"].shape) == [2, 2]
        assert servicer.counters.snapshot()["failed_requests"] == 1
    finally:
        server.stop(grace=None).wait()


def test_the_client_waits_for_a_restarted_teacher_then_gives_up_in_one_line(random_teacher, caplog):
    server, _, port = build_server(random_teacher, port=0, max_batch=64)
    x = torch.randn(5, 3, 32, 32)
    want, _ = random_teacher.forward(x, ["logits"])
    with connect(f"grpc://127.0.0.1:{port}", wire_dtype="float32", max_wait=60) as client:
        client.describe()
        server.stop(grace=None).wait()
        restarted = []
        threading.Timer(1.0, lambda: restarted.append(build_server(random_teacher, port=port, max_batch=64))).start()
        with caplog.at_level(logging.WARNING, logger="student_trainer.teacher"):
            got = client.infer(x)["logits"]  # waits through the outage, then gets its answer
        assert torch.allclose(got, want["logits"], atol=1e-5)
        assert client.retries >= 1 and client.counters.requests == 1 and client.counters.images == 5
        retry_lines = [r for r in caplog.records if "retry" in r.getMessage()]
        assert len(retry_lines) == client.retries  # each retry logged once
        assert "answered Infer again" in caplog.text

        new_server, new_servicer, _ = restarted[0]
        assert new_servicer.counters.snapshot()["images"] == 5  # the retried call was answered once
        new_server.stop(grace=None).wait()
        client.retry = type(client.retry)(max_wait=1.0)
        start = time.monotonic()
        with pytest.raises(TeacherUnavailable) as err:
            client.infer(x)
        assert 1.0 <= time.monotonic() - start < 10
    message = str(err.value)
    assert "\n" not in message and f"teacher at grpc://127.0.0.1:{port} gave no answer to Infer" in message
    assert "--teacher-max-wait" in message and "UNAVAILABLE" in message
    assert client.counters.images == 5  # nothing counted for the call that was never answered


def test_a_reply_nobody_waits_for_is_not_counted_as_served(caplog):
    """The client's deadline passes mid-forward: the server must not count what the client never got."""
    from common.teacher_model import load_teacher

    teacher = load_teacher(arch="resnet20", input_shape=(3, 32, 32))  # ~0.3-1 s for 256 images here
    server, servicer, port = build_server(teacher, port=0, max_batch=256)
    request = pb.InferRequest(images=codec.encode(torch.randn(256, 3, 32, 32), "float16"), request_id="late")
    try:
        with caplog.at_level(logging.WARNING, logger="teacher_server"), \
                grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.TeacherStub(channel).Infer(request, timeout=0.15)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            deadline = time.monotonic() + 60
            while servicer.counters.snapshot()["failed_requests"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        stats = servicer.counters.snapshot()
        assert (stats["requests"], stats["images"], stats["failed_requests"]) == (0, 0, 1)
        assert "request 'late': the caller left before the reply" in caplog.text
    finally:
        server.stop(grace=None).wait()


def _scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_sigterm_lets_the_call_in_flight_finish_and_exits_0(tmp_path):
    metrics_port = free_port()
    stats = tmp_path / "final.json"
    proc, port = start_server(tmp_path, "server", "--arch", "resnet20", "--input-shape", "3,32,32",
                              "--max-batch", "256", "--metrics-port", metrics_port, "--stats-file", stats,
                              "--grace", "60")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert next(watch).status == SERVING
            request = pb.InferRequest(images=codec.encode(torch.randn(256, 3, 32, 32), "float16"),
                                      request_id="long-call")
            call = pb_grpc.TeacherStub(channel).Infer.future(request, timeout=120)
            deadline = time.monotonic() + 60
            while _scrape(metrics_port).get(("unixkd_teacher_inflight_requests", ())) != 1:
                assert time.monotonic() < deadline and not call.done(), "the call never reached the server"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)  # while the call is in the server's hands
            assert next(watch).status == NOT_SERVING  # draining
            watch.cancel()
            reply = call.result()
        assert reply.request_id == "long-call" and list(reply.outputs["logits"].shape) == [256, 10]
        assert proc.wait(timeout=60) == 0
    finally:
        stop_server(proc)
    final = json.loads(stats.read_text())
    assert final["requests"] == 1 and final["images"] == 256 and final["failed_requests"] == 0
    assert "draining" in (tmp_path / "server.log").read_text()


def test_training_survives_a_teacher_restart_with_nothing_lost_or_counted_twice(grpc_teacher, tmp_path):
    """Kill (SIGTERM) the teacher mid-run, start a new one on the same port: the run ends as if nothing happened."""
    flags = ["--method", "unix", "--batch-size", "16", "--k", "12", "--train-size", "480"]
    teacher_flags = ["--arch", "resnet8", "--num-classes", "10", "--input-shape", "3,32,32", "--seed", "0"]
    first, port = start_server(tmp_path, "life1", *teacher_flags, "--stats-file", tmp_path / "life1.json")
    second = None
    run_dir = tmp_path / "interrupted"
    trainer = subprocess.Popen([sys.executable, "-m", "student_trainer", "--teacher-url", f"grpc://127.0.0.1:{port}",
                                "--teacher-max-wait", "120", *train_args(run_dir, *flags)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_requests(port, 3, trainer)
        assert stop_server(first) == 0
        second, _ = start_server(tmp_path, "life2", *teacher_flags, "--stats-file", tmp_path / "life2.json",
                                 port=port)
        out, err = trainer.communicate(timeout=300)
        assert trainer.returncode == 0, err
        assert stop_server(second) == 0
    finally:
        for proc in (trainer, first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    lives = [json.loads((tmp_path / f"life{i}.json").read_text()) for i in (1, 2)]
    s = json.loads((run_dir / "summary.json").read_text())
    assert lives[0]["images"] > 0 and lives[1]["images"] > 0  # both lives served part of the run
    assert lives[0]["images"] + lives[1]["images"] == s["teacher_images"] == 30 * 12
    assert lives[0]["requests"] + lives[1]["requests"] == s["teacher_requests"] == 30
    assert "retry" in err and "answered Infer again" in err
    assert "restarted" in s["server_stats_source"]

    # The same run without the outage (same teacher weights, in-process server): same steps, same student.
    url, _ = grpc_teacher
    clean = train(train_args(tmp_path / "clean", "--teacher-url", url, *flags))
    assert s["steps"] == clean["steps"] == 30 and s["teacher_images"] == clean["teacher_images"]
    interrupted = load_checkpoint(run_dir / "last.pt")["state_dict"]
    uninterrupted = load_checkpoint(tmp_path / "clean" / "last.pt")["state_dict"]
    for name, tensor in uninterrupted.items():
        assert torch.allclose(interrupted[name].float(), tensor.float(), atol=1e-4), name


def test_with_a_serial_teacher_an_outage_also_saves_progress_and_resume_finishes_the_run(grpc_teacher, tmp_path):
    """--serial-teacher waits for each answer before the student's forward: a teacher gone past
    --teacher-max-wait still ends the run with its progress saved, and --resume finishes it as one run."""
    flags = ["--method", "kd", "--batch-size", "16", "--train-size", "320", "--serial-teacher"]
    teacher_flags = ["--arch", "resnet8", "--num-classes", "10", "--input-shape", "3,32,32", "--seed", "0"]
    first, port = start_server(tmp_path, "life1", *teacher_flags)
    second = None
    run_dir, url = tmp_path / "interrupted", f"grpc://127.0.0.1:{port}"
    trainer = subprocess.Popen([sys.executable, "-m", "student_trainer", "--teacher-url", url, "--teacher-max-wait",
                                "1", *train_args(run_dir, *flags)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_requests(port, 3, trainer)
        assert stop_server(first) == 0
        out, err = trainer.communicate(timeout=120)
        assert trainer.returncode == 2, err[-3000:]
        assert f"progress saved, continue with --resume {run_dir}" in err.strip().splitlines()[-1]
        saved = load_checkpoint(run_dir / "last.pt")
        assert 3 <= saved["counters"]["steps"] < 20
        second, _ = start_server(tmp_path, "life2", *teacher_flags, port=port)
        s = train(["--teacher-url", url, *train_args(run_dir, *flags, "--resume", run_dir)])
        assert stop_server(second) == 0
    finally:
        for proc in (trainer, first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    clean = train(train_args(tmp_path / "clean", "--teacher-url", grpc_teacher[0], *flags))
    assert s["steps"] == clean["steps"] == 20 and s["teacher_images"] == clean["teacher_images"] == 320
    interrupted = load_checkpoint(run_dir / "last.pt")["state_dict"]
    for name, tensor in load_checkpoint(tmp_path / "clean" / "last.pt")["state_dict"].items():
        assert torch.equal(interrupted[name], tensor), name
