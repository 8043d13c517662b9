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
                      "--replay-store", store, "--batch-size", "16", "--train-size", "96", "--epochs", "2",
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
    assert first["teacher_images"] == served == 96        # each training image once, in epoch 1
    assert first["student_images"] == 192
    assert first["answer_store"]["written"] == 97     # 96 views and the teacher's record

    again, served = _served(servicer, lambda: train(_flags(url, tmp_path / "b", store_url, "--seed", 1)))
    assert again["teacher_images"] == served == 0
    assert again["answer_store"]["hits"] == 192 and again["answer_store"]["written"] == 0
    assert again["compute_vs_kd"] < first["compute_vs_kd"]

    other_url, other = second_teacher                    # the same store, another teacher: nothing of the first's
    third, served = _served(other, lambda: train(_flags(other_url, tmp_path / "c", store_url, "--seed", 0)))
    assert third["teacher_images"] == served == 96
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
    assert len(err) == 1 and "96 of 96 training images have fewer than --views 2" in err[0]
    with pytest.raises(SystemExit):
        train(_flags(None, tmp_path / "d", store, "--teacher-id", "ab" * 32))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no answers of teacher abababababab" in err[0]
    _stored_answers_are_the_teachers_for_their_views(store, first["teacher_id"])


def _stored_answers_are_the_teachers_for_their_views(store, teacher_id):
    from common.answer_store import open_store
    from common.data import build_dataset
    from common.teacher_model import load_teacher
    from common.views import Views, render_views
    from student_trainer.query.stored_views import ViewShelf

    spec = build_dataset("synthetic", train_size=96, test_size=64, seed=0)
    with open_store(store) as opened:
        shelf = ViewShelf(opened, teacher_sha256=teacher_id, data_fingerprint=spec.train_views.fingerprint,
                          keys=["logits"], views=1)
        entries = [slots[0] for slots in shelf.read(list(range(96)))]
    assert all(e is not None for e in entries)
    teacher = load_teacher(arch="resnet8", num_classes=10, input_shape=(3, 32, 32), seed=0)
    views = Views.from_array([e.header["recipe"] for e in entries])
    logits, _ = teacher.forward(render_views(spec.train_views, spec.train_views.to_rows(views)), ["logits"])
    assert torch.allclose(logits["logits"], torch.stack([e.tensors["logits"] for e in entries]), atol=1e-5)




def test_resume_is_exact_even_after_the_crashed_run_stored_more(grpc_teacher, tmp_path):
    url, _ = grpc_teacher
    flags = ("--views", 2, "--epochs", 3, "--prefetch", 1)
    whole = train(_flags(url, tmp_path / "whole", str(tmp_path / "s1"), *flags))
    cut, store = tmp_path / "cut", str(tmp_path / "s2")
    train(_flags(url, cut, store, *flags, "--max-steps", 8))                     # mid epoch 2: a checkpoint
    shutil.copytree(cut, tmp_path / "saved")
    # the run goes on past its checkpoint, storing more views, and dies; its last checkpoint is the saved one
    train(_flags(url, cut, store, *flags, "--max-steps", 15, "--resume", cut))
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
    assert "needs --replay-store" in capsys.readouterr().err


def test_select_replays_exactly_the_stored_view_and_answer(tmp_path):
    """The policy alone: a visit to an image with V stored views trains on one of them, rendered from its recipe,
    with its answer; the others get a fresh view and are asked about."""
    from common.answer_store import open_store
    from common.answer_store.codec import Entry
    from common.views import StoredImages, Views, render_views
    from student_trainer.query import PolicyContext, ReplayConfig, build_policy
    from student_trainer.query.stored_views import ViewShelf

    g = torch.Generator().manual_seed(0)
    whole = StoredImages(torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g),
                         torch.arange(40) % 10, 2, True, (0.5,), (0.25,))
    stored = whole.subset(torch.arange(10, 30))            # a training subset: recipes name the whole split
    with open_store(str(tmp_path / "s")) as store:
        shelf = ViewShelf(store, teacher_sha256="t", data_fingerprint=whole.fingerprint, keys=["logits"], views=2)
        kept = {}
        for sample in range(10, 20):                        # samples 10..19 have both views stored
            views = Views(stored.draw(5, 1, torch.tensor([sample - 10, sample - 10])))
            rows = stored.to_split(views).as_array()
            rows[1, 1] = (rows[0, 1] + 3) % 5 - 2           # two different views
            answers = torch.randn(2, 10, generator=g)
            shelf.write([sample, sample], [[0], [1]], [Entry({"recipe": r.tolist()}, {"logits": a})
                                                      for r, a in zip(rows, answers)])
            kept[sample] = {tuple(r.tolist()): a for r, a in zip(rows, answers)}
        policy = build_policy("replay", ReplayConfig(batch_size=8, seed=0, views=2), 20,
                              PolicyContext(stored, store, "t", ("logits",)))
        local = torch.tensor([0, 5, 9, 10, 15, 19, 2, 12])  # rows 0-9 of the subset are samples 10-19
        recipes = stored.draw(0, 1, local)
        q = policy.select(None, stored.render(recipes), stored.labels[local], local,
                          views=stored.to_split(Views(recipes)))
    ask = q.ask.tolist()
    assert ask == [False, False, False, True, True, True, False, True]
    replayed = q.views.take(torch.tensor([i for i, a in enumerate(ask) if not a]))
    assert torch.equal(q.images[~q.ask], render_views(whole, replayed))   # the stored views, from their recipes
    want = torch.stack([kept[r[0]][r] for r in map(tuple, replayed.as_array().tolist())])
    assert torch.equal(q.known["logits"], want)
    fresh = torch.tensor([i for i, a in enumerate(ask) if a])
    assert torch.equal(q.images[fresh], stored.render(recipes)[fresh])   # the drawn views, unchanged


def test_top_k_answers_are_stored_compact_and_verify_store_checks_them(grpc_teacher, tmp_path, capsys):
    """--answer-topk 3: the store keeps 4K + 24-byte entries, never shared with dense answers; --verify-store
    re-asks a seeded share of the replayed views, counted apart on both ends, and trains as without it."""
    url, servicer = grpc_teacher
    store = tmp_path / "answers"
    first = train(_flags(url, tmp_path / "a", store, "--seed", 0, "--answer-topk", 3))
    assert first["teacher_images"] == first["server_images_delta"] == 96
    written = first["answer_store"]
    assert written["written"] == 97 and written["bytes_written"] < 97 * 36 + 1000   # 36-byte views (+ the record)

    checked = train(_flags(url, tmp_path / "b", store, "--seed", 1, "--answer-topk", 3, "--verify-store", 0.5))
    assert checked["teacher_images"] == 0 and checked["answer_store"]["written"] == 0
    assert 40 < checked["verify_images"] == checked["server_verify_images_delta"] == checked["server_images_delta"] < 150
    found = checked["verify_store"]["keys"]["logits.top3"]
    assert found["images"] == checked["verify_images"] and found["k"] == 3
    assert found["mean_abs_diff"] < 1e-3 and found["topk_differ"] == 0 and not checked["verify_store"]["warned"]
    plain = train(_flags(url, tmp_path / "c", store, "--seed", 1, "--answer-topk", 3))
    assert plain["verify_images"] == 0 and plain["verify_store"] is None
    assert all(torch.equal(a, b) for a, b in zip(_weights(tmp_path / "b").values(),
                                                 _weights(tmp_path / "c").values()))   # checks change nothing

    dense = train(_flags(url, tmp_path / "d", store, "--seed", 1))            # dense answers: none of the compact
    assert dense["teacher_images"] == 96
    for flags, says in [(("--answer-topk", 11), "more than the teacher's 10 classes"),
                        (("--answer-topk", -1), "give K >= 1"), (("--verify-store", 1.5), "0 to 1")]:
        with pytest.raises(SystemExit):
            train(_flags(url, tmp_path / "e", store, *flags))
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err


def test_the_loaders_lookahead_renders_the_replayed_views_so_select_renders_none(tmp_path):
    """The loader's lookahead (pickled, as it crosses into a worker) picks the stored view the policy will replay;
    images rendered from its rows pass through select untouched; without it, select renders the replayed
    views itself, to the same bits."""
    import contextlib
    import pickle

    from common.answer_store import open_store
    from common.answer_store.codec import Entry
    from common.views import StoredImages, Views, render_views
    from student_trainer.query import PolicyContext, ReplayConfig, build_policy
    from student_trainer.query.stored_views import ViewShelf, views_of

    class Phases:
        def __init__(self):
            self.entered = []

        def phase(self, name):
            self.entered.append(name)
            return contextlib.nullcontext()

    g = torch.Generator().manual_seed(1)
    whole = StoredImages(torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8, generator=g),
                         torch.arange(30) % 10, 2, True, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with open_store(str(tmp_path / "s")) as store:
        shelf = ViewShelf(store, teacher_sha256="t", data_fingerprint=whole.fingerprint, keys=["logits"], views=2)
        for sample in range(0, 12):                          # samples 0..11 have both views stored
            rows = whole.to_split(Views(whole.draw(7, sample, torch.tensor([sample, sample])))).as_array()
            rows[1, 1] = (rows[0, 1] + 3) % 5 - 2
            shelf.write([sample, sample], [[0], [1]], [Entry({"recipe": r.tolist()}, {"logits": torch.randn(10)})
                                                      for r in rows])
        policy = build_policy("replay", ReplayConfig(batch_size=8, seed=0, views=2), 30,
                              PolicyContext(whole, store, "t", ("logits",)))
        lookahead = pickle.loads(pickle.dumps(policy.loader_lookahead()))
        local = torch.tensor([0, 3, 5, 11, 12, 20, 7, 29])
        drawn = whole.to_split(Views(whole.draw(0, 2, local)))
        guessed = views_of(lookahead(drawn.as_array()).tolist())
        changed = [i for i in range(8) if guessed.as_array()[i].tolist() != drawn.as_array()[i].tolist()]
        assert set(changed) <= {0, 1, 2, 3, 6} and changed           # only images with V views stored
        images = render_views(whole, guessed)
        timer = Phases()
        q = policy.select(None, images, whole.labels[local], local, timer=timer, views=drawn, rendered=guessed)
        assert "data" not in timer.entered and q.images.data_ptr() == images.data_ptr()   # nothing rendered again
        assert q.views.as_array().tolist() == guessed.as_array().tolist()
        assert q.ask.tolist() == [False, False, False, False, True, True, False, True]
        timer = Phases()                                     # a loader without the lookahead: the policy renders
        plain = policy.select(None, render_views(whole, drawn), whole.labels[local], local, timer=timer, views=drawn)
        assert "data" in timer.entered and torch.equal(plain.images, q.images)
