"""--query replay over a real gRPC teacher: each view is paid for once, and the store outlives the run."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from student_trainer.cli import main as train
from tests.conftest import train_args

ROOT = Path(__file__).resolve().parents[1]


def _flags(url, out, store, *extra):
    return train_args(out, *(["--teacher-url", url] if url else []), "--query", "replay", "--loss", "kd",
                      "--answer-store", store, "--batch-size", "16", "--train-size", "160", "--epochs", "2",
                      "--milestones", "1", "--wire-dtype", "float32", "--no-tensorboard", *map(str, extra))


def _weights(run_dir):
    return torch.load(Path(run_dir) / "last.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def second_teacher():
    """Another teacher (other random weights) behind its own real server."""
    from common.teacher_model import load_teacher
    from teacher_server.server import build_server

    server, servicer, port = build_server(load_teacher(arch="resnet8", num_classes=10, input_shape=(3, 32, 32),
                                                       seed=1), host="127.0.0.1", port=0, max_batch=64)
    yield f"grpc://127.0.0.1:{port}", servicer
    server.stop(grace=None).wait()


@pytest.fixture(params=["lmdb", "redis"])
def store_url(request, tmp_path):
    if request.param == "lmdb":
        yield str(tmp_path / "answers")
        return
    from tests.redis_server import RedisServer

    with RedisServer() as url:
        yield url


def _served(servicer, run):
    before = servicer.counters.snapshot()["images"]
    summary = run()
    return summary, servicer.counters.snapshot()["images"] - before


def test_each_view_is_paid_once_and_a_second_seed_pays_nothing(grpc_teacher, second_teacher, store_url, tmp_path):
    url, servicer = grpc_teacher
    first, served = _served(servicer, lambda: train(_flags(url, tmp_path / "a", store_url, "--seed", 0)))
    assert first["teacher_images"] == served == 160       # each training image once, in epoch 1
    assert first["student_images"] == 320
    assert first["answer_store"]["written"] == 161    # 160 views and the teacher's record

    again, served = _served(servicer, lambda: train(_flags(url, tmp_path / "b", store_url, "--seed", 1)))
    assert again["teacher_images"] == served == 0
    assert again["answer_store"]["hits"] == 320 and again["answer_store"]["written"] == 0
    assert again["compute_vs_kd"] < first["compute_vs_kd"]

    other_url, other = second_teacher                    # the same store, another teacher: nothing of the first's
    third, served = _served(other, lambda: train(_flags(other_url, tmp_path / "c", store_url, "--seed", 0)))
    assert third["teacher_images"] == served == 160
    assert third["teacher_id"] != first["teacher_id"]


def test_a_stored_teacher_trains_without_a_server_and_refuses_what_is_not_stored(grpc_teacher, tmp_path, capsys):
    url, _ = grpc_teacher
    store = str(tmp_path / "answers")
    first = train(_flags(url, tmp_path / "a", store))
    offline = train(_flags(None, tmp_path / "b", store, "--teacher-id", first["teacher_id"], "--seed", 3))
    assert offline["teacher_images"] == 0 and offline["steps"] == first["steps"]
    assert offline["compute_vs_kd"] < first["compute_vs_kd"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train(_flags(None, tmp_path / "c", store, "--teacher-id", first["teacher_id"], "--views", 2))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "160 of 160 training images have fewer than --views 2" in err[0]
    with pytest.raises(SystemExit):
        train(_flags(None, tmp_path / "d", store, "--teacher-id", "ab" * 32))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no answers of teacher abababababab" in err[0]


def test_a_replayed_view_is_the_stored_view_with_its_stored_answer(grpc_teacher, tmp_path):
    """Two views a image, three epochs: epoch 3 replays; what the student saw must equal what was stored."""
    from common.answer_store import open_store
    from common.data import build_dataset
    from common.views import Views, render_views

    url, _ = grpc_teacher
    store = str(tmp_path / "answers")
    s = train(_flags(url, tmp_path / "a", store, "--views", 2, "--epochs", 3, "--record-indices"))
    # synthetic views are only flipped or not: a fresh view that is already stored is not asked for again
    assert 160 < s["teacher_images"] == s["answer_store"]["written"] - 1 <= 320
    spec = build_dataset("synthetic", train_size=160, test_size=64, seed=0)
    from student_trainer.query.stored_views import ViewShelf
    with open_store(store) as opened:
        shelf = ViewShelf(opened, teacher_sha256=s["teacher_id"], data_fingerprint=spec.train_views.fingerprint,
                          keys=["logits"], views=2)
        entries = [e for slots in shelf.read(list(range(8))) for e in slots if e is not None]
    assert len(entries) >= 8
    from common.teacher_model import load_teacher
    teacher = load_teacher(arch="resnet8", num_classes=10, input_shape=(3, 32, 32), seed=0)
    views = Views.from_array([e.header["recipe"] for e in entries])
    logits, _ = teacher.forward(render_views(spec.train_views, spec.train_views.to_rows(views)), ["logits"])
    assert torch.allclose(logits["logits"], torch.stack([e.tensors["logits"] for e in entries]), atol=1e-5)


def test_resume_is_exact_even_after_the_crashed_run_stored_more(grpc_teacher, tmp_path):
    url, _ = grpc_teacher
    flags = ("--views", 2, "--epochs", 3, "--prefetch", 1)
    whole = train(_flags(url, tmp_path / "whole", str(tmp_path / "s1"), *flags))
    cut, store = tmp_path / "cut", str(tmp_path / "s2")
    train(_flags(url, cut, store, *flags, "--max-steps", 14))                    # mid epoch 2: a checkpoint
    shutil.copytree(cut, tmp_path / "saved")
    # the run goes on past its checkpoint, storing more views, and dies; its last checkpoint is the saved one
    train(_flags(url, cut, store, *flags, "--max-steps", 26, "--resume", cut))
    shutil.rmtree(cut)
    shutil.copytree(tmp_path / "saved", cut)
    resumed = train(_flags(url, cut, store, *flags, "--resume", cut))
    a, b = _weights(tmp_path / "whole"), _weights(cut)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert resumed["top1"] == whole["top1"]


def test_a_damaged_store_is_one_line_and_needs_views_as_recipes(grpc_teacher, tmp_path, capsys):
    url, _ = grpc_teacher
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "data.mdb").write_bytes(b"\x80\x04not an lmdb file" * 64)
    proc = subprocess.run([sys.executable, "-m", "student_trainer", *_flags(url, tmp_path / "a", bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    with pytest.raises(SystemExit):
        train(_flags(url, tmp_path / "b", tmp_path / "s", "--augment-draws", "per-item"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --augment-draws batched" in err[0]
    with pytest.raises(SystemExit):
        train(train_args(tmp_path / "c", "--query", "replay", "--loss", "kd", "--teacher-url", url))
    assert "needs --answer-store" in capsys.readouterr().err
