"""The two commands as a user types them: real processes, readable errors, no tracebacks."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture()
def server_process(tmp_path):
    from common.launch import start_teacher, stop_teacher

    log = (tmp_path / "server.log").open("w")
    try:
        proc, port = start_teacher("--arch", "resnet8", "--num-classes", "10", "--input-shape", "1,28,28",
                                   "--port", "0", port_file=tmp_path / "port", timeout=60, stdout=log, cwd=ROOT)
    except (ChildProcessError, TimeoutError) as e:
        pytest.fail(f"{e}: {(tmp_path / 'server.log').read_text()}")
    yield proc, port
    stop_teacher(proc, timeout=30)


def test_trainer_against_a_served_teacher_process(server_process, tmp_path):
    proc, port = server_process
    r = _run("student_trainer", "--teacher-url", f"grpc://127.0.0.1:{port}", "--method", "unix",
             "--dataset", "synthetic", "--image-shape", "1,28,28", "--arch", "resnet8", "--epochs", "1",
             "--batch-size", "32", "--k", "24", "--train-size", "96", "--test-size", "64", "--workers", "0",
             "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["teacher_images"] == 72 == s["server_images_delta"]
    assert "teacher_images" in r.stdout and "compute_vs_kd" in r.stdout
    proc.terminate()
    assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("args,fragment", [
    (("teacher_server", "--checkpoint", "/nonexistent/teacher.pt"), "does not exist"),
    (("teacher_server",), "give exactly one of --checkpoint PATH or --arch NAME"),
    (("teacher_server", "--arch", "resnet9000"), "unknown"),
    (("student_trainer", "--method", "unix", "--k", "80"), "--k must be between 1 and --batch-size 64"),
    (("student_trainer", "--method", "kd", "--epochs", "1"), "needs --teacher-url"),
    (("student_trainer", "--method", "kd", "--teacher-url", "http://x:1"), "no known scheme"),
    (("student_trainer", "--method", "kd", "--teacher-url", "grpc://127.0.0.1"), "needs a host and a port"),
    (("student_trainer", "--method", "ce", "--dataset", "cifar100", "--data-root", "/nonexistent"), "/nonexistent"),
    (("student_trainer", "--method", "ce", "--dataset", "mnist-9000"), "unknown"),
    (("student_trainer", "--resume", "runs/x", "--overwrite"), "--overwrite: not allowed with argument --resume"),
])
def test_bad_input_is_one_readable_line(args, fragment):
    r = _run(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert fragment in last and ": error: " in last


def test_unreachable_teacher_is_one_readable_line(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _run("student_trainer", "--method", "kd", "--teacher-url", f"grpc://127.0.0.1:{port}",
             "--connect-timeout", "1", "--epochs", "1", "--out", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"no teacher answered at grpc://127.0.0.1:{port} within 1 s" in r.stderr.strip().splitlines()[-1]


def test_demo_prints_kd_and_unix_side_by_side(tmp_path):
    teacher = tmp_path / "teacher"
    r = _run("student_trainer", "--method", "ce", "--dataset", "synthetic", "--arch", "resnet8", "--epochs", "1",
             "--train-size", "64", "--test-size", "32", "--workers", "0", "--out", str(teacher))
    assert r.returncode == 0, r.stderr
    demo = ("student_trainer.tools.demo", "--checkpoint", str(teacher / "best.pt"), "--dataset", "synthetic",
            "--train-size", "128", "--workers", "0", "--out", str(tmp_path / "demo"), "--test-size", "32",
            "--no-progress")
    for r in (_run(*demo, timeout=300), _run(*demo, timeout=300)):  # the second replaces the first's runs
        assert r.returncode == 0, r.stderr
    table = r.stdout.split("side by side ===")[1].splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in table if line.strip()}
    assert rows["method"] == ["kd", "unix"]
    assert rows["teacher_images"] == ["128", "96"]
    assert rows["server_images_delta"] == ["128", "96"]
    assert rows["teacher_query_ratio"] == ["1", "0.75"]
