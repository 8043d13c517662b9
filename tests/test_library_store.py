"""The answer store for a loop of one's own: AnswerCache and CachedTeacher against a real server and an LMDB
store, the server counting the images it was asked about."""
import pytest
import torch

from common.answer_store import Entry
from student_trainer import CachedTeacher, AnswerCache, TeacherModule


@pytest.fixture(scope="module")
def teacher(grpc_teacher):
    with TeacherModule(grpc_teacher[0], wire_dtype="float32") as module:
        yield module


@pytest.fixture(scope="module")
def images():
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def served(grpc_teacher) -> int:
    return grpc_teacher[1].counters.snapshot()["images"]


def test_the_teacher_is_asked_about_each_row_once(grpc_teacher, teacher, images, tmp_path):
    samples, views = torch.arange(100, 108), torch.tensor([0, 1] * 4)
    with AnswerCache.for_teacher(f"lmdb:{tmp_path}", teacher, dataset_id="synthetic-train") as store:
        assert store.teacher_id == teacher.info.weights_sha256 and store.shape == (10,)
        cached = CachedTeacher(teacher, store)
        reference = teacher(images)
        before = served(grpc_teacher)
        first = cached(images, samples, views)
        assert cached.teacher_images == 8 and served(grpc_teacher) - before == 8
        assert first.shape == (8, 10) and first.dtype == torch.float32
        assert torch.allclose(first, reference, atol=1e-5)
        second = cached(images, samples.tolist(), views.tolist())
        assert cached.teacher_images == 0 and served(grpc_teacher) - before == 8
        assert torch.equal(second, first)  # bit for bit
        views[3] = 7  # row 3 seen in a new view: only it is asked about
        third = cached(images, samples, views)
        assert cached.teacher_images == 1 and served(grpc_teacher) - before == 9
        assert torch.equal(third[views != 7], first[views != 7])  # read back, bit for bit
        assert torch.allclose(third[3], first[3], atol=1e-5)  # asked again: the same image's answer
        assert store.counters.written == 9 and store.counters.hits == 8 + 7
        got = store.lookup(samples, views)
        assert got.found.all() and torch.equal(got.answers, third) and got.missing.numel() == 0
    with AnswerCache(str(tmp_path), teacher_id="another teacher", dataset_id="synthetic-train",
                       shape=(10,)) as other:
        got = other.lookup(samples, views)
        assert not got.found.any() and torch.equal(got.answers, torch.zeros(8, 10))
    with AnswerCache(str(tmp_path), teacher_id=teacher.info.weights_sha256, dataset_id="another set") as other:
        assert not other.lookup(samples, views).found.any()


def test_keep_is_put_if_absent(tmp_path):
    with AnswerCache(f"lmdb:{tmp_path}", teacher_id="t", dataset_id="d") as store:
        answers = torch.randn(3, 5)
        assert store.keep([0, 1, 2], [0, 0, 0], answers) == 3
        assert store.shape == (5,)
        assert store.keep([1, 2, 3], [0, 0, 0], torch.zeros(3, 5)) == 1  # 1 and 2 keep their first answers
        got = store.lookup([0, 1, 2, 3, 4], [0, 0, 0, 0, 0])
        assert got.found.tolist() == [True, True, True, True, False]
        assert torch.equal(got.answers[:3], answers) and not got.answers[3:].any()
        assert got.missing.tolist() == [4]
        with pytest.raises(ValueError, match="one view per sample"):
            store.lookup([0, 1], [0])
        with pytest.raises(ValueError, match="1-D list or tensor of ints"):
            store.lookup([0.5], [0])
        with pytest.raises(ValueError, match="keeps \\[5\\]"):
            store.keep([9], [0], torch.zeros(1, 6))


def test_damaged_and_foreign_entries_read_as_missing(tmp_path):
    with AnswerCache(f"lmdb:{tmp_path}", teacher_id="t", dataset_id="d", shape=(4,)) as store:
        keys = store.store_keys([0, 1, 2, 3, 4], [0] * 5)
        store.store.put_many([(keys[0], b"\x00garbage bytes, no entry")])
        store.store.write([
            (keys[1], Entry({"sample": 1, "view": 0}, {"logits": torch.zeros(5)})),      # wrong shape
            (keys[2], Entry({"sample": 2, "view": 0}, {"stage3": torch.zeros(4)})),      # another output
            (keys[3], Entry({"sample": 7, "view": 0}, {"logits": torch.zeros(4)})),      # another row's
            (keys[4], Entry({"sample": 4, "view": 0}, {"logits": torch.ones(4)}))])      # a good one
        got = store.lookup([0, 1, 2, 3, 4], [0] * 5)
        assert got.found.tolist() == [False, False, False, False, True]
        assert torch.equal(got.answers[4], torch.ones(4)) and not got.answers[:4].any()
        assert store.counters.as_dict() | {"bytes_read": 0, "bytes_written": 0} == dict(
            hits=1, misses=4, damaged=4, bytes_read=0, bytes_written=0, written=4, already_present=0)


def test_a_bad_url_or_id_is_one_line(teacher, tmp_path):
    with pytest.raises(ValueError, match="unknown scheme") as e:
        AnswerCache("nosuch://x", teacher_id="t", dataset_id="d")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="teacher_id must be a non-empty str"):
        AnswerCache(str(tmp_path), teacher_id="", dataset_id="d")
    with AnswerCache(str(tmp_path), teacher_id="t", dataset_id="d", key="stage3") as store:
        with pytest.raises(ValueError, match="keeps 'stage3'"):
            CachedTeacher(teacher, store)
