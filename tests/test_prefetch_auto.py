"""--prefetch auto, the default: steps chosen ahead only where that changes no bit of the result.

Tiny epochs (3 steps) and a deep window (3 steps ahead: every step of an epoch chosen before the first is
trained): a policy that remembers or stores answers per image (cached, replay) still trains exactly as without
prefetching.
"""
from pathlib import Path

import pytest
import torch

from student_trainer.cli import main as train
from student_trainer.engine.prefetch_depth import MAX_AUTO_DEPTH, PREFETCH_MEMORY, PrefetchDepth
from tests.conftest import train_args

POLICIES = {
    "all": ("--method", "kd"),
    "random": ("--query", "random", "--loss", "kd", "--k", "12"),
    "cached": ("--query", "cached", "--loss", "kd", "--refresh-every", "2"),
    "replay": ("--query", "replay", "--loss", "kd", "--views", "1"),
}


def _flags(url, out, *extra):
    return train_args(out, "--teacher-url", url, "--batch-size", "16", "--train-size", "48", "--epochs", "4",
                      "--milestones", "2", "--wire-dtype", "float32", "--no-tensorboard", *extra)


def _weights(run_dir):
    return torch.load(Path(run_dir) / "last.pt", weights_only=True)["state_dict"]


def _run(url, out, policy, *extra):
    store = ("--replay-store", str(out) + "-store") if policy == "replay" else ()
    return train(_flags(url, out, *POLICIES[policy], *store, *extra))


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_choosing_ahead_changes_no_bit_for_a_policy_that_does_not_read_the_weights(grpc_teacher, tmp_path, policy):
    url, _ = grpc_teacher
    serial = _run(url, tmp_path / "serial", policy, "--serial-teacher")
    auto = _run(url, tmp_path / "auto", policy)                      # the default
    deep = _run(url, tmp_path / "deep", policy, "--prefetch", "3")   # three steps ahead: a whole epoch
    assert serial["prefetch_depth_max"] == 0 and auto["prefetch"] == "auto" and auto["prefetch_depth_max"] >= 1
    assert deep["prefetch_depth_max"] == 3
    for other in (auto, deep):
        assert other["teacher_images"] == serial["teacher_images"]
        assert other["top1"] == serial["top1"]
    a = _weights(tmp_path / "serial")
    for run in ("auto", "deep"):
        b = _weights(tmp_path / run)
        assert all(torch.equal(a[n], b[n]) for n in a), run


def test_unix_by_default_scores_with_the_current_weights_and_draws_its_next_batch_while_it_waits(grpc_teacher,
                                                                                                 tmp_path):
    """auto is 0 for a policy that reads the weights; the next batch drawn during the teacher's wait changes
    nothing (the same weights as --serial-teacher, which never waits after the forward)."""
    url, _ = grpc_teacher
    flags = ("--method", "unix", "--k", "12", "--train-size", "96")
    serial = train(_flags(url, tmp_path / "serial", *flags, "--serial-teacher"))
    auto = train(_flags(url, tmp_path / "auto", *flags))
    assert auto["prefetch"] == "auto" and auto["prefetch_depth_max"] == 0
    a, b = _weights(tmp_path / "serial"), _weights(tmp_path / "auto")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert auto["teacher_images"] == serial["teacher_images"] == 4 * 6 * 12


def test_auto_depth_follows_the_teacher_s_round_trip_within_its_memory_bound():
    depth = PrefetchDepth(None, reads_weights=False)
    assert depth.depth() == 1                        # nothing measured yet
    depth.round_trips.extend([0.30, 0.31, 0.29])
    depth.step_times.extend([0.10, 0.10, 0.11])
    assert depth.depth() == 4                        # ceil(1.25 * 0.30 / 0.10)
    depth.round_trips.extend([10.0] * 8)
    assert depth.depth() == MAX_AUTO_DEPTH           # a teacher far slower than a step: no deeper than the cap
    depth.limit_memory(PREFETCH_MEMORY // 2)
    assert depth.depth() == 2 and depth.bound == 2   # two steps of images fill the memory allowed
    depth.limit_memory(PREFETCH_MEMORY * 3)
    assert depth.depth() == 1                        # one step bigger than the memory allowed: still one
    assert depth.deepest == MAX_AUTO_DEPTH
    weights = PrefetchDepth(None, reads_weights=True)
    weights.round_trips.append(1.0)
    weights.step_times.append(0.1)
    assert weights.depth() == 0 and weights.bound == 0
    fixed = PrefetchDepth(2, reads_weights=True)
    assert fixed.depth() == 2 and fixed.setting == 2 and PrefetchDepth(None, False).setting == "auto"


def test_time_queued_behind_the_run_s_own_requests_is_not_a_round_trip():
    """Three requests sent at once to a teacher that answers one every 0.1 s: each took 0.1 s of the teacher's,
    though the last waited 0.3 s; counting the queue would make the depth feed on itself."""
    depth = PrefetchDepth(None, reads_weights=False)
    for answered in (10.1, 10.2, 10.3):
        depth.answered(10.0, answered)
    assert list(depth.round_trips) == pytest.approx([0.1, 0.1, 0.1])
    depth.answered(11.0, 11.25)                      # sent after the last answer came: its own 0.25 s
    assert depth.round_trips[-1] == pytest.approx(0.25)


def test_a_bad_prefetch_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train(train_args(tmp_path, "--method", "ce", "--prefetch", "soon"))
    assert e.value.code == 2
    assert "--prefetch: give a number of steps or auto, not 'soon'" in capsys.readouterr().err.strip().splitlines()[-1]
