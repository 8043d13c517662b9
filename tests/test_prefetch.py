"""--prefetch D: the next batches are chosen and sent while the student trains; counted once, resumed exactly."""
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


def _flags(url, out, *extra):
    return train_args(out, "--teacher-url", url, "--batch-size", "16", "--k", "12", "--train-size", "160",
                      "--epochs", "2", "--milestones", "1", "--wire-dtype", "float32", "--no-tensorboard", *extra)


def _state(run_dir):
    return torch.load(Path(run_dir) / "last.pt", weights_only=True)["state_dict"]


def _same_weights(a_dir, b_dir) -> bool:
    a, b = _state(a_dir), _state(b_dir)
    return all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("method", ["kd", "unix"])
def test_prefetch_counts_every_image_once_and_agrees_with_the_server(grpc_teacher, tmp_path, method):
    url, servicer = grpc_teacher
    plain = train(_flags(url, tmp_path / "d0", "--method", method))
    before = servicer.counters.snapshot()
    ahead = train(_flags(url, tmp_path / "d2", "--method", method, "--prefetch", "2"))
    after = servicer.counters.snapshot()
    assert ahead["steps"] == plain["steps"] == 20
    assert ahead["teacher_images"] == plain["teacher_images"] == after["images"] - before["images"]
    assert ahead["teacher_requests"] == after["requests"] - before["requests"]
    assert ahead["bytes_sent"] == after["bytes_in"] - before["bytes_in"]


def test_prefetch_changes_nothing_when_the_choice_does_not_depend_on_the_weights(grpc_teacher, tmp_path):
    """KD sends every image: prefetched answers are the same answers, so the weights are bit-identical."""
    url, _ = grpc_teacher
    train(_flags(url, tmp_path / "d0", "--method", "kd"))
    train(_flags(url, tmp_path / "d1", "--method", "kd", "--prefetch", "1"))
    assert _same_weights(tmp_path / "d0", tmp_path / "d1")


def test_unix_with_prefetch_scores_with_older_weights(grpc_teacher, tmp_path):
    """The documented deviation: the uncertainty pass of batch t+1 runs before step t trains."""
    url, _ = grpc_teacher
    train(_flags(url, tmp_path / "d0", "--method", "unix"))
    train(_flags(url, tmp_path / "d1", "--method", "unix", "--prefetch", "1"))
    assert not _same_weights(tmp_path / "d0", tmp_path / "d1")


def test_a_run_killed_with_steps_in_flight_resumes_bit_exactly(grpc_teacher, tmp_path):
    url, _ = grpc_teacher
    flags = ("--method", "unix", "--prefetch", "2", "--checkpoint-every", "3")
    train(_flags(url, tmp_path / "straight", *flags))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "student_trainer", *_flags(url, killed, *flags)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (killed / "last.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    saved = torch.load(killed / "last.pt", weights_only=True)
    assert saved["progress"]["step_in_epoch"] > 0 and len(saved["inflight"]) == 2
    assert all(s["answer"] is not None for s in saved["inflight"])  # settled before saving
    with pytest.raises(SystemExit) as refused:  # two steps in flight do not fit a run that keeps one
        train(_flags(url, killed, "--method", "unix", "--prefetch", "0", "--resume", str(killed)))
    assert refused.value.code == 2
    resumed = train(_flags(url, killed, *flags, "--resume", str(killed)))
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert _same_weights(tmp_path / "straight", killed)
    for key in ("steps", "teacher_images", "teacher_requests", "bytes_sent", "top1"):
        assert resumed[key] == straight[key], key


def test_a_max_steps_stop_leaves_nothing_in_flight_and_a_bad_prefetch_is_one_line(grpc_teacher, tmp_path, capsys):
    url, _ = grpc_teacher
    train(_flags(url, tmp_path, "--method", "unix", "--prefetch", "2", "--checkpoint-every", "3",
                 "--max-steps", "14", "--epochs", "1"))
    # a mid-epoch stop by --max-steps sends nothing past it: nothing in flight, any --prefetch resumes
    assert torch.load(tmp_path / "last.pt", weights_only=True)["inflight"] == []
    with pytest.raises(SystemExit) as e:
        train(_flags(url, tmp_path / "x", "--method", "unix", "--prefetch", "-1"))
    assert e.value.code == 2 and "--prefetch must be >= 0" in capsys.readouterr().err
