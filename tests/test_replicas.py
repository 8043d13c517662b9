"""Teacher replicas: grpc://H1:P1,H2:P2 spreads calls with gRPC's round_robin; counts add up; a dead replica costs no step."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch

from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc
from student_trainer.cli import main as train
from student_trainer.teachers import connect
from tests.conftest import train_args
from tests.test_reliability import start_server, stop_server, wait_for_requests

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ["--arch", "resnet8", "--num-classes", "10", "--input-shape", "3,32,32", "--seed", "0"]


@pytest.fixture
def two_replicas(random_teacher):
    from teacher_server.server import build_server

    servers = [build_server(random_teacher, host="127.0.0.1", port=0, max_batch=64) for _ in range(2)]
    yield [(servicer, port) for _, servicer, port in servers]
    for server, _, _ in servers:
        server.stop(grace=None).wait()


def _url(ports) -> str:
    return "grpc://" + ",".join(f"127.0.0.1:{p}" for p in ports)


def test_calls_are_spread_over_the_replicas_and_their_counts_add_up(two_replicas):
    (a, pa), (b, pb_) = two_replicas
    with connect(_url([pa, pb_])) as client:
        start = client.server_stats()
        for _ in range(20):
            client.infer(torch.randn(4, 3, 32, 32))
        end = client.server_stats()
        counts = client.counters
    served = [a.counters.snapshot()["images"], b.counters.snapshot()["images"]]
    assert min(served) > 0 and sum(served) == counts.images == 80  # both replicas served, nothing twice
    assert end.images - start.images == 80 and end.requests - start.requests == counts.requests == 20
    assert end.bytes_in - start.bytes_in == counts.bytes_sent
    assert set(end.replicas) == {f"127.0.0.1:{pa}", f"127.0.0.1:{pb_}"}
    assert sorted(end.replicas[r]["images"] - start.replicas[r]["images"] for r in end.replicas) == sorted(served)


def test_a_run_over_two_replicas_reconciles_its_counts(two_replicas, tmp_path):
    ports = [port for _, port in two_replicas]
    s = train(train_args(tmp_path, "--teacher-url", _url(ports), "--method", "unix", "--batch-size", "16",
                         "--k", "12", "--train-size", "160", "--no-tensorboard"))
    assert s["server_images_delta"] == s["teacher_images"] == 120
    per_replica = s["server_replicas"]
    assert len(per_replica) == 2 and all(r["images"] > 0 for r in per_replica.values())
    assert sum(r["images"] for r in per_replica.values()) == 120
    assert "summed over 2 replicas" in s["server_stats_source"]


@pytest.mark.parametrize("url, message", [
    ("grpc://127.0.0.1:1,127.0.0.1:1", "names a replica twice"),
    ("grpc://127.0.0.1:1,127.0.0.1", "needs a host and a port"),
])
def test_a_bad_replica_list_is_one_line(url, message):
    with pytest.raises(ValueError, match=message):
        connect(url)


def test_a_replica_killed_mid_run_costs_no_step(tmp_path):
    first, p1 = start_server(tmp_path, "replica1", *TEACHER)
    second, p2 = start_server(tmp_path, "replica2", *TEACHER)
    run_dir = tmp_path / "run"
    flags = ["--method", "kd", "--batch-size", "16", "--train-size", "480", "--no-tensorboard"]
    trainer = subprocess.Popen([sys.executable, "-m", "student_trainer", "--teacher-url", _url([p1, p2]),
                                "--teacher-max-wait", "60", *train_args(run_dir, *flags)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_requests(p2, 3, trainer)
        second.send_signal(signal.SIGKILL)  # a crash: no goodbye, calls in flight fail
        second.wait(timeout=30)
        _, err = trainer.communicate(timeout=300)
        assert trainer.returncode == 0, err
        with grpc.insecure_channel(f"127.0.0.1:{p1}") as channel:
            survivor = pb_grpc.TeacherStub(channel).Stats(pb.StatsRequest(), timeout=10).images
        assert stop_server(first) == 0
    finally:
        for proc in (trainer, first, second):
            if proc.poll() is None:
                proc.kill()
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["steps"] == 30 and s["teacher_images"] == 480  # every step trained with its answers
    assert 0 < survivor < 480  # the dead replica had served part of the run, the survivor the rest
    assert s["server_images_delta"] is None  # the dead replica's counts died with it: said, not guessed
    assert s["server_replicas"][f"127.0.0.1:{p2}"] is None
    assert s["server_replicas"][f"127.0.0.1:{p1}"]["images"] == survivor
    assert f"127.0.0.1:{p2}" in s["server_stats_source"]
