"""--query cached: each image's teacher answer is asked for once every R visits and reused in between."""
import json
from pathlib import Path

import pytest
import torch

from student_trainer.cli import main as train
from student_trainer.query import CachedConfig, build_policy
from tests.conftest import train_args


def _policy(refresh: int, size: int):
    return build_policy("cached", CachedConfig(batch_size=8, refresh_every=refresh, seed=0), dataset_size=size)


def _answer_for(indices: torch.Tensor, visit: int) -> dict:
    """What a teacher would say: a value that tells apart the image and the visit it was asked on."""
    return {"logits": torch.stack([indices.float(), torch.full_like(indices, visit).float()], dim=1)}


def test_every_image_is_asked_once_every_r_visits_and_its_answer_reused_between():
    size, refresh = 12, 3
    policy = _policy(refresh, size)
    images, labels, indices = torch.randn(size, 1, 2, 2), torch.zeros(size, dtype=torch.long), torch.arange(size)
    last_asked = {}
    for visit in range(7):
        q = policy.select(None, images, labels, indices)
        asked = indices[q.ask]
        want = indices if visit == 0 else indices[(visit + indices) % refresh == 0]
        assert torch.equal(asked, want)
        assert q.teacher_rows == len(want) and torch.equal(q.asked_images(), images[q.ask])
        full = policy.complete(q, _answer_for(asked, visit))
        assert torch.equal(full["logits"][:, 0], indices.float())  # every row is its own image's answer
        for i in indices.tolist():
            if i in asked.tolist():
                last_asked[i] = visit
            assert full["logits"][i, 1] == last_asked[i]  # fresh, or from the visit it was last asked on
            assert visit - last_asked[i] < refresh  # never older than R visits


def test_refresh_every_one_asks_about_every_image_every_time():
    policy = _policy(1, 8)
    images, labels, indices = torch.randn(8, 1, 2, 2), torch.zeros(8, dtype=torch.long), torch.arange(8)
    for visit in range(3):
        q = policy.select(None, images, labels, indices)
        assert q.teacher_rows == 8 and not q.known
        policy.complete(q, _answer_for(indices, visit))


def test_the_state_round_trips_and_a_bad_refresh_is_one_line(capsys):
    policy = _policy(2, 8)
    images, labels, indices = torch.randn(8, 1, 2, 2), torch.zeros(8, dtype=torch.long), torch.arange(8)
    policy.complete(policy.select(None, images, labels, indices), _answer_for(indices, 0))
    clone = _policy(2, 8)
    clone.load_state_dict(policy.state_dict())
    a, b = policy.select(None, images, labels, indices), clone.select(None, images, labels, indices)
    assert torch.equal(a.ask, b.ask) and torch.equal(a.known["logits"], b.known["logits"])
    with pytest.raises(SystemExit):
        train(["--query", "cached", "--loss", "kd", "--refresh-every", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["student_trainer: error: --refresh-every must be at least 1, got 0"]


def _flags(url, out, *extra):
    return train_args(out, "--teacher-url", url, "--batch-size", "16", "--train-size", "160", "--epochs", "3",
                      "--milestones", "2", "--wire-dtype", "float32", "--no-tensorboard", *extra)


def _weights(run_dir):
    return torch.load(Path(run_dir) / "last.pt", weights_only=True)["state_dict"]


def test_refresh_every_one_is_kd_bit_for_bit(grpc_teacher, tmp_path):
    url, _ = grpc_teacher
    kd = train(_flags(url, tmp_path / "kd", "--method", "kd"))
    cached = train(_flags(url, tmp_path / "c1", "--query", "cached", "--loss", "kd", "--refresh-every", "1"))
    a, b = _weights(tmp_path / "kd"), _weights(tmp_path / "c1")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert cached["teacher_images"] == kd["teacher_images"] == 480
    assert cached["compute_vs_kd"] == pytest.approx(1.0)


def test_counts_agree_with_the_server_and_the_rule(grpc_teacher, tmp_path):
    url, servicer = grpc_teacher
    before = servicer.counters.snapshot()
    s = train(_flags(url, tmp_path / "c3", "--query", "cached", "--loss", "kd", "--refresh-every", "3"))
    after = servicer.counters.snapshot()
    idx = torch.arange(160)
    want = 160 + sum(int(((epoch + idx) % 3 == 0).sum()) for epoch in (1, 2))  # all new, then due ones
    assert s["teacher_images"] == want == after["images"] - before["images"]
    assert s["bytes_sent"] == after["bytes_in"] - before["bytes_in"]
    assert s["student_backward_images"] == s["student_forward_images"] == 480  # every image trains
    ft, fs, bs = s["teacher_flops_per_image"], s["student_flops_per_image"], s["student_backward_flops_per_image"]
    assert s["compute_vs_kd"] == pytest.approx((want * ft + 480 * (fs + bs)) / (480 * (ft + fs + bs)))


def test_a_resumed_run_ends_with_the_same_weights(grpc_teacher, tmp_path):
    url, _ = grpc_teacher
    flags = ("--query", "cached", "--loss", "kd", "--refresh-every", "2", "--prefetch", "1")
    whole = train(_flags(url, tmp_path / "whole", *flags))
    train(_flags(url, tmp_path / "cut", *flags, "--max-steps", "15"))  # mid-epoch 2
    resumed = train(_flags(url, tmp_path / "cut", *flags, "--resume", str(tmp_path / "cut")))
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert resumed["teacher_images"] == whole["teacher_images"]


def test_budget_keeps_the_schedule_shape_on_fewer_steps(tmp_path, capsys):
    s = train(train_args(tmp_path / "b", "--method", "ce", "--batch-size", "16", "--train-size", "160",
                         "--epochs", "4", "--milestones", "2", "--budget", "0.55", "--no-tensorboard"))
    assert s["steps"] == 22  # 0.55 of 40, ending mid-epoch 3
    lines = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3] and lines[-1]["partial"]
    # the decay after epoch 2 of 4 moves to step round(2 * 10 * 0.55) = 11: epoch 2 ends decayed
    assert lines[0]["lr"] == pytest.approx(0.05) and lines[1]["lr"] == pytest.approx(0.005)
    with pytest.raises(SystemExit):
        train(train_args(tmp_path / "x", "--method", "ce", "--budget", "0"))
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "student_trainer: error: --budget is a fraction of the schedule's steps, in (0, 1]; got 0.0")
