"""Resume exactly: a run stopped or killed mid-epoch and resumed ends bit-identical to an uninterrupted one."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from student_trainer.cli import main as train
from tests.conftest import train_args

ROOT = Path(__file__).resolve().parents[1]
COUNTERS = ("steps", "student_images", "teacher_images", "teacher_requests", "bytes_sent", "bytes_received",
            "student_forward_images", "student_backward_images")


def _flags(url, out, *extra):
    return train_args(out, "--method", "unix", "--teacher-url", url, "--batch-size", "16", "--k", "12",
                      "--train-size", "160", "--epochs", "2", "--milestones", "1", "--wire-dtype", "float32",
                      *extra)


def _weights(run_dir):
    return torch.load(Path(run_dir) / "last.pt", weights_only=True)  # what we write must load weights-only


def _assert_same_run(a_dir, b_dir):
    a, b = _weights(a_dir), _weights(b_dir)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    sa = json.loads((Path(a_dir) / "summary.json").read_text())
    sb = json.loads((Path(b_dir) / "summary.json").read_text())
    for key in (*COUNTERS, "top1", "epochs"):
        assert sa[key] == sb[key], key
    ma = [json.loads(l)["top1"] for l in (Path(a_dir) / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(l)["top1"] for l in (Path(b_dir) / "metrics.jsonl").read_text().splitlines()]
    assert ma == mb


def test_stop_mid_epoch_and_resume_is_bit_identical(grpc_teacher, tmp_path):
    url, _ = grpc_teacher
    train(_flags(url, tmp_path / "straight"))
    train(_flags(url, tmp_path / "split", "--max-steps", "7"))
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["steps"] == 7
    train(_flags(url, tmp_path / "split", "--resume", str(tmp_path / "split")))
    _assert_same_run(tmp_path / "straight", tmp_path / "split")


def _trainer(flags):
    return subprocess.Popen([sys.executable, "-m", "student_trainer", *flags], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_mid_epoch_and_resume_is_bit_identical(grpc_teacher, tmp_path):
    url, _ = grpc_teacher
    straight = _trainer(_flags(url, tmp_path / "straight"))
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    killed_dir = tmp_path / "killed"
    proc = _trainer(_flags(url, killed_dir, "--checkpoint-every", "3"))
    deadline = time.monotonic() + 120
    while not (killed_dir / "last.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    saved = torch.load(killed_dir / "last.pt", weights_only=True)
    assert saved["progress"]["step_in_epoch"] > 0 and not (killed_dir / "summary.json").exists()

    resumed = _trainer(_flags(url, killed_dir, "--checkpoint-every", "3", "--resume", str(killed_dir)))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    _assert_same_run(tmp_path / "straight", killed_dir)


def test_resume_of_a_weights_only_checkpoint_is_refused(tmp_path):
    from common.checkpoint import make_checkpoint, save_checkpoint
    from common.models import build_model

    save_checkpoint(make_checkpoint(build_model("resnet8", 10), arch="resnet8", num_classes=10,
                                    input_shape=(3, 32, 32)), tmp_path / "last.pt")
    with pytest.raises(SystemExit):
        train(train_args(tmp_path, "--method", "ce", "--resume", str(tmp_path)))
