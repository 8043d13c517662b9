"""A Triton teacher that goes away and comes back, or whose counts cannot be read: real
``python -m teacher_server --backend triton`` processes on fixed free ports, stopped with SIGINT
(what PyTriton obeys) and waited for before a new one takes the same ports."""
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from common.checkpoint import load_checkpoint
from common.launch import start_teacher
from student_trainer.cli import main as train
from tests.conftest import train_args
from tests.test_triton import _stop, triton_unavailable

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--method", "unix", "--batch-size", "16", "--k", "12", "--train-size", "480"]  # 30 steps
STEPS, K = 30, 12


@pytest.fixture(scope="module")
def ports():
    reason = triton_unavailable()
    if reason:
        pytest.skip(reason)
    from teacher_server.triton_backend import free_port

    chosen = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    assert len(set(chosen.values())) == 3
    return chosen


def start_life(tmp_path: Path, name: str, ports: dict) -> subprocess.Popen:
    """One life of the Triton teacher (resnet8, seed 0: the weights of ``random_teacher``) on ``ports``."""
    log = (tmp_path / f"{name}.log").open("w")
    try:
        proc, _ = start_teacher(
            "--backend", "triton", "--arch", "resnet8", "--num-classes", "10", "--input-shape", "3,32,32",
            "--seed", "0", "--max-batch", "64", "--port", ports["grpc"], "--http-port", ports["http"],
            "--metrics-port", ports["metrics"], "--triton-token-file", tmp_path / "token",
            port_file=tmp_path / f"{name}.port", stdout=log, cwd=ROOT, poll=0.1)
    except (ChildProcessError, TimeoutError) as e:
        pytest.fail(f"Triton teacher {name} did not start ({e}): {(tmp_path / f'{name}.log').read_text()[-3000:]}")
    return proc


def served_requests(ports: dict) -> int:
    """Requests Triton has answered for the model, from its (open) Prometheus endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).read().decode()
    return int(sum(float(v) for v in re.findall(r'^nv_inference_request_success\{[^}]*model="teacher"[^}]*\}\s+(\S+)$',
                                                text, re.MULTILINE)))


def start_trainer(url: str, run_dir: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "student_trainer", "--teacher-url", url,
                             *map(str, extra), *train_args(run_dir, *FLAGS)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_requests(trainer: subprocess.Popen, ports: dict, n: int) -> None:
    deadline = time.monotonic() + 120
    while served_requests(ports) < n:
        assert trainer.poll() is None and time.monotonic() < deadline, trainer.communicate()
        time.sleep(0.02)


@pytest.fixture(scope="module")
def clean_weights(grpc_teacher, tmp_path_factory):
    """The same run without an outage, against the same teacher weights (the in-process gRPC server)."""
    url, _ = grpc_teacher
    out = tmp_path_factory.mktemp("clean")
    s = train(train_args(out, "--teacher-url", url, *FLAGS))
    assert s["steps"] == STEPS and s["teacher_images"] == STEPS * K
    return load_checkpoint(out / "last.pt")["state_dict"]


def assert_same_weights(run_dir: Path, clean: dict) -> None:
    got = load_checkpoint(run_dir / "last.pt")["state_dict"]
    for name, tensor in clean.items():
        assert torch.allclose(got[name].float(), tensor.float(), atol=1e-4), name


def test_training_survives_a_triton_restart_on_the_same_ports_with_nothing_lost(ports, tmp_path, clean_weights):
    first = start_life(tmp_path, "life1", ports)
    second = None
    url = f"triton://127.0.0.1:{ports['grpc']}/teacher?metrics_port={ports['metrics']}"
    run_dir = tmp_path / "interrupted"
    trainer = start_trainer(url, run_dir, "--token-file", tmp_path / "token", "--teacher-max-wait", 120)
    try:
        wait_for_requests(trainer, ports, 3)
        assert _stop(first) == 0  # SIGINT; the process has exited, so its ports are free again
        assert trainer.poll() is None, "the run ended while the teacher was away"
        second = start_life(tmp_path, "life2", ports)
        out, err = trainer.communicate(timeout=300)
        assert trainer.returncode == 0, err[-3000:]
        second_life = served_requests(ports)
        assert _stop(second) == 0
    finally:
        for proc in (trainer, first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["steps"] == STEPS and s["teacher_images"] == STEPS * K and s["teacher_requests"] == STEPS
    assert 0 < second_life < STEPS  # the second life answered the rest of the run, not all of it
    assert "did not answer ModelInfer" in err and "answered ModelInfer again" in err
    assert "Triton was unreachable during the run" in s["server_stats_source"]
    assert_same_weights(run_dir, clean_weights)


def test_an_outage_longer_than_max_wait_saves_progress_and_resume_finishes_the_run(ports, tmp_path, clean_weights):
    first = start_life(tmp_path, "life1", ports)
    second = None
    url = f"triton://127.0.0.1:{ports['grpc']}/teacher?metrics_port={ports['metrics']}"
    run_dir = tmp_path / "run"
    trainer = start_trainer(url, run_dir, "--token-file", tmp_path / "token", "--teacher-max-wait", 2)
    try:
        wait_for_requests(trainer, ports, 3)
        assert _stop(first) == 0
        out, err = trainer.communicate(timeout=120)
        assert trainer.returncode == 2, err[-3000:]
        line = err.strip().splitlines()[-1]
        assert re.fullmatch(rf"student_trainer: error: teacher at triton://127\.0\.0\.1:{ports['grpc']}/teacher "
                            rf"gave no answer to ModelInfer for \d+ s \(the limit, --teacher-max-wait, is 2 s\); "
                            rf"last error .+; progress saved, continue with --resume {re.escape(str(run_dir))}", line)
        saved = load_checkpoint(run_dir / "last.pt")
        assert 3 <= saved["counters"]["steps"] < STEPS

        second = start_life(tmp_path, "life2", ports)
        s = train(train_args(run_dir, "--teacher-url", url, "--token-file", tmp_path / "token", "--resume", run_dir,
                             *FLAGS))
        assert _stop(second) == 0
    finally:
        for proc in (trainer, first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert s["steps"] == STEPS and s["teacher_images"] == STEPS * K and s["teacher_requests"] == STEPS
    assert_same_weights(run_dir, clean_weights)


def test_counts_triton_will_not_give_leave_the_run_going_and_are_null_with_the_reason(ports, tmp_path, caplog):
    """No token (statistics restricted) and nothing on the metrics port: the run trains, warns once."""
    from teacher_server.triton_backend import free_port

    server = start_life(tmp_path, "life", ports)
    try:
        url = f"triton://127.0.0.1:{ports['grpc']}/teacher?metrics_port={free_port()}"
        with caplog.at_level("WARNING", logger="student_trainer.teacher"):
            s = train(train_args(tmp_path / "run", "--teacher-url", url, "--method", "kd", "--batch-size", "16",
                                 "--train-size", "32"))
        assert _stop(server) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert s["steps"] == 2 and s["teacher_images"] == s["teacher_requests"] * 16 == 32
    assert s["server_images_delta"] is None and s["server_requests_delta"] is None
    source = json.loads((tmp_path / "run" / "summary.json").read_text())["server_stats_source"]
    assert source.startswith("unavailable: cannot read Triton's counts: triton statistics: ")
    assert "restricted" in source and "Connection refused" in source
    warnings = [r for r in caplog.records if "cannot read the counts" in r.getMessage()]
    assert len(warnings) == 1  # at the start; the end is as unreadable and says nothing more
