"""One student trained by several processes: real ``torchrun`` runs (2 ranks, gloo on the CPU) against a real
gRPC teacher in this process, and the sharding, checks and checkpoint pieces on their own.

The teacher here answers batches of at most 4 images, so every forward it runs holds exactly one request's
chunk, whichever rank sent it and whenever: its answers cannot depend on which requests the server happened
to gather together, and two runs can be compared bit for bit.
"""
from __future__ import annotations

import json
import os
import shutil
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
COUNTERS = ("steps", "student_images", "student_forward_images", "student_backward_images", "teacher_images",
            "teacher_requests", "bytes_sent", "bytes_received")


@pytest.fixture(scope="module")
def teacher(random_teacher):
    from teacher_server.server import build_server

    server, servicer, port = build_server(random_teacher, host="127.0.0.1", port=0, max_batch=4)
    yield f"grpc://127.0.0.1:{port}", servicer
    server.stop(grace=None).wait()


def torchrun(nproc: int, flags, *, wait: bool = True, timeout: float = 240):
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "student_trainer", *map(str, flags)]
    if not wait:  # its own process group, so that a test can kill torchrun and its ranks together
        return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def unix_flags(url, out, *extra):
    """UNIX, global batch 16 (8 a rank), k 8 (4 a rank), 8 steps an epoch, 2 epochs."""
    return train_args(out, "--method", "unix", "--teacher-url", url, "--batch-size", "16", "--k", "8",
                      "--train-size", "128", "--epochs", "2", "--milestones", "1", "--wire-dtype", "float32",
                      "--checkpoint-every", "4", "--client-id", "ddp-test", *extra)


def kd_flags(url, out, *extra):
    """KD, 72 images, global batch 16: 4 full global steps and a last one of 8 (4 a rank at P = 2)."""
    return train_args(out, "--method", "kd", "--teacher-url", url, "--batch-size", "16", "--train-size", "72",
                      "--no-augment", "--wire-dtype", "float32", "--no-tensorboard", "--record-indices", *extra)


def summary(run_dir) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def saved(run_dir) -> dict:
    return torch.load(Path(run_dir) / "last.pt", weights_only=True)


def top1s(run_dir) -> list[float]:
    return [json.loads(line)["top1"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a_dir, b_dir) -> None:
    a, b = saved(a_dir)["state_dict"], saved(b_dir)["state_dict"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    sa, sb = summary(a_dir), summary(b_dir)
    for key in (*COUNTERS, "top1", "epochs"):
        assert sa[key] == sb[key], key
    assert top1s(a_dir) == top1s(b_dir)


def indices_by_step(run_dir) -> dict[int, list[list[int]]]:
    """``--record-indices``: step -> each rank's trained indices."""
    files = sorted(Path(run_dir).glob("indices.rank*.jsonl"))
    by_step: dict[int, list[list[int]]] = {}
    for rank, path in enumerate(files):
        assert path.name == f"indices.rank{rank}.jsonl"
        for line in path.read_text().splitlines():
            record = json.loads(line)
            by_step.setdefault(record["step"], []).append(record["indices"])
    return by_step


@pytest.fixture(scope="module")
def straight(teacher, tmp_path_factory):
    """One uninterrupted 2-rank UNIX run, with the server's counts around it."""
    url, servicer = teacher
    out = tmp_path_factory.mktemp("ddp") / "straight"
    before = servicer.counters.snapshot()
    per_client_before = [servicer.counters.snapshot(f"ddp-test-rank{r}")["images"] for r in range(2)]
    done = ok(torchrun(2, unix_flags(url, out, "--record-indices")))
    after = servicer.counters.snapshot()
    per_client = [servicer.counters.snapshot(f"ddp-test-rank{r}")["images"] - per_client_before[r]
                  for r in range(2)]
    return {"out": out, "before": before, "after": after, "per_client": per_client, "stdout": done.stdout}


def test_two_ranks_train_one_student_and_the_server_counts_what_the_summary_says(straight):
    s, before, after = summary(straight["out"]), straight["before"], straight["after"]
    assert (s["processes"], s["batch_size"], s["k"], s["steps"]) == (2, 16, 8, 16)
    assert s["student_images"] == 16 * 16 and s["student_backward_images"] == 16 * 8
    assert s["teacher_images"] == 16 * 8 == after["images"] - before["images"] == s["server_images_delta"]
    assert s["teacher_requests"] == after["requests"] - before["requests"] == s["server_requests_delta"]
    assert s["bytes_sent"] == after["bytes_in"] - before["bytes_in"] == s["server_bytes_in_delta"]
    assert straight["per_client"] == [64, 64]  # each rank asked under its own id, for k/P = 4 a step
    # compute vs KD: the paper's (k F_t + (N + k) F_s + k B_s) / (N (F_t + F_s + B_s)) with the global N and k
    ft, fs, bs = s["teacher_flops_per_image"], s["student_flops_per_image"], s["student_backward_flops_per_image"]
    assert s["compute_vs_kd"] == pytest.approx((8 * ft + 24 * fs + 8 * bs) / (16 * (ft + fs + bs)))
    assert straight["stdout"].count("teacher_images") == 1  # rank 0 alone prints the summary
    ckpt = saved(straight["out"])
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2 and ckpt["counters"]["student_images"] == 16 * 16
    assert [r["counters"]["teacher_images"] for r in ckpt["ranks"]] == [64, 64]
    assert len(top1s(straight["out"])) == 2
    # each global step: two disjoint shares of 4 trained images (k/P of each rank's 8)
    steps = indices_by_step(straight["out"])
    assert sorted(steps) == list(range(1, 17))
    for shares in steps.values():
        assert [len(x) for x in shares] == [4, 4] and not set(shares[0]) & set(shares[1])


def test_two_identical_two_rank_runs_give_bit_identical_weights(straight, teacher, tmp_path):
    url, _ = teacher
    ok(torchrun(2, unix_flags(url, tmp_path / "again")))
    assert_same_run(straight["out"], tmp_path / "again")


@pytest.fixture(scope="module")
def kd_runs(teacher, tmp_path_factory):
    """The same KD run in one process and in two."""
    url, _ = teacher
    tmp = tmp_path_factory.mktemp("kd")
    train(kd_flags(url, tmp / "p1"))
    ok(torchrun(2, kd_flags(url, tmp / "p2")))
    return tmp / "p1", tmp / "p2"


def test_two_ranks_train_the_images_one_process_trains_at_each_global_step(kd_runs):
    one, two = summary(kd_runs[0]), summary(kd_runs[1])
    p1, p2 = indices_by_step(kd_runs[0]), indices_by_step(kd_runs[1])
    assert sorted(p1) == sorted(p2) == [1, 2, 3, 4, 5]
    for step in p1:
        (alone,), (rank0, rank1) = p1[step], p2[step]
        assert len(rank0) == len(rank1) == len(alone) // 2
        assert sorted(rank0 + rank1) == sorted(alone), step  # the same set of images ...
        assert rank0 + rank1 == alone, step  # ... and each rank's share is its slice of the global batch
    for key in ("steps", "student_images", "teacher_images"):
        assert one[key] == two[key], key


def our_errors(done: subprocess.CompletedProcess) -> list[str]:
    """The trainer's own error lines (torchrun adds its report of a failed child after them)."""
    return [line for line in done.stderr.splitlines() if line.startswith(("student_trainer:", "student_trainer["))]


def _file_id(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def test_a_two_rank_run_stopped_by_max_steps_and_resumed_ends_as_the_uninterrupted_one(straight, teacher,
                                                                                         tmp_path):
    url, _ = teacher
    out = tmp_path / "split"
    ok(torchrun(2, unix_flags(url, out, "--max-steps", "3")))
    assert summary(out)["steps"] == 3 and saved(out)["progress"]["step_in_epoch"] == 3
    ok(torchrun(2, unix_flags(url, out, "--resume", out)))
    assert_same_run(straight["out"], out)


def test_a_two_rank_run_killed_with_steps_in_flight_resumes_exactly(kd_runs, teacher, tmp_path):
    """--prefetch 1 (which leaves KD's weights as they are): SIGKILL to torchrun and its ranks right after a
    checkpoint holding each rank's next step, chosen and sent; the resumed run ends as the straight one."""
    url, _ = teacher
    out = tmp_path / "killed"
    flags = ("--prefetch", "1", "--checkpoint-every", "2")
    proc = torchrun(2, kd_flags(url, out, *flags), wait=False)
    deadline = time.monotonic() + 180
    while _file_id(out / "last.pt") is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-4000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    ckpt = saved(out)
    assert ckpt["counters"]["steps"] in (2, 4) and not (out / "summary.json").exists()
    assert [len(r["inflight"]) for r in ckpt["ranks"]] == [1, 1]  # each rank's next step
    assert all(r["inflight"][0]["answer"] is not None for r in ckpt["ranks"])
    assert not torch.equal(ckpt["ranks"][0]["inflight"][0]["images"], ckpt["ranks"][1]["inflight"][0]["images"])
    ok(torchrun(2, kd_flags(url, out, *flags, "--resume", out)))
    assert_same_run(kd_runs[1], out)


def test_resuming_a_two_rank_checkpoint_with_one_process_is_one_line(straight, teacher, tmp_path):
    url, _ = teacher
    done = torchrun(1, unix_flags(url, tmp_path / "one", "--resume", straight["out"]))
    assert done.returncode != 0
    errors = our_errors(done)
    assert len(errors) == 1, done.stderr[-3000:]
    assert "saved by a run of 2 process(es), and this run has 1" in errors[0]
    assert "--nproc_per_node=2" in errors[0]


def test_a_two_rank_run_into_a_folder_holding_a_run_is_refused_in_one_line_and_overwrite_replaces_it(
        straight, teacher, tmp_path):
    url, _ = teacher
    out = tmp_path / "again"
    shutil.copytree(straight["out"], out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    done = torchrun(2, unix_flags(url, out))
    assert done.returncode != 0
    assert our_errors(done) == [  # rank 0's alone
        f"student_trainer[rank 0]: error: {out} holds a run already (best.pt, data.json, indices.rank0.jsonl, "
        f"indices.rank1.jsonl, last.pt, metrics.jsonl, summary.json, tensorboard): continue it with --resume {out}, "
        f"or replace it with --overwrite"], done.stderr[-3000:]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    ok(torchrun(2, unix_flags(url, out, "--overwrite")))  # without --record-indices: none are left
    assert_same_run(straight["out"], out)
    assert not list(out.glob("indices.rank*.jsonl")) and len(list((out / "tensorboard").iterdir())) == 1


def test_a_global_batch_that_does_not_split_is_one_line(teacher, tmp_path):
    url, _ = teacher
    done = torchrun(2, unix_flags(url, tmp_path / "odd", "--batch-size", "15"))
    assert done.returncode != 0
    errors = our_errors(done)
    assert errors == ["student_trainer: error: --batch-size 15 is the global batch, split evenly over the 2 "
                      "processes torchrun started: give a multiple of 2"], done.stderr[-3000:]
    assert not (tmp_path / "odd").exists()


# --- the pieces, without processes --------------------------------------------------------------------
def _flags(*extra):
    from student_trainer.cli import build_parser, validate

    args = build_parser().parse_args(["--teacher-url", "grpc://127.0.0.1:1", *extra])
    return args, validate


@pytest.mark.parametrize("extra, says", [
    (("--batch-size", "30", "--k", "8"), "--batch-size 30 is the global batch"),
    (("--k", "45"), "--k 45 is the teacher's images per global batch"),
    (("--loss", "kd+crd"), "--loss crd keeps a memory bank"),
    (("--query", "cached"), "--query cached remembers"),
    (("--client-id", "x" * 60), "--client-id gets -rank<R> appended"),
])
def test_flags_that_cannot_be_split_over_the_ranks_are_refused(extra, says):
    args, validate = _flags(*extra)
    with pytest.raises(ValueError, match="^" + says.replace("+", r"\+")):
        validate(args, world_size=4)
    args, validate = _flags(*extra)
    validate(args, world_size=1)  # one process: all fine


def test_each_rank_sees_its_share_of_the_global_flags():
    args, validate = _flags("--batch-size", "64", "--k", "48", "--b", "32")
    method = validate(args, world_size=4)
    local = method.for_rank(4).policy
    assert (local.batch_size, local.k, local.b) == (16, 12, 8.0)
    assert (method.policy.batch_size, method.policy.k, method.policy.b) == (64, 48, 32)  # the run's are kept
    assert method.for_rank(1) is method


@pytest.mark.parametrize("size, start", [(73, 0), (80, 32), (70, 48), (5, 0)])
def test_the_sharded_order_cuts_each_global_batch_into_rank_slices(size, start):
    from student_trainer.engine.data_order import EpochSampler

    n, world = 16, 4
    alone = EpochSampler(size, seed=3, batch_size=n)
    alone.set_epoch(2, start)
    whole = [index for _, index in alone]
    shards = []
    for rank in range(world):
        sampler = EpochSampler(size, seed=3, batch_size=n, rank=rank, world_size=world)
        sampler.set_epoch(2, start)
        keys = list(sampler)
        assert len(keys) == len(sampler) and all(epoch == 2 for epoch, _ in keys)
        shards.append([index for _, index in keys])
    for g, first in enumerate(range(0, len(whole), n)):
        batch = whole[first:first + n]
        share = len(batch) // world
        for rank in range(world):
            assert shards[rank][g * (n // world):g * (n // world) + share] == batch[rank * share:(rank + 1) * share]
    # all of every global batch is trained, but the last partial one's last (len % world) images
    trained = sorted(i for s in shards for i in s)
    last = len(whole) % n
    assert len(trained) == len(whole) - last % world and len(set(trained)) == len(trained)


def test_a_checkpoint_of_another_world_size_is_refused_naming_both():
    from common.checkpoint import CheckpointError
    from student_trainer.engine.distributed import DistInfo
    from student_trainer.engine.run_state import own_entries, rank_entries

    states = [{"counters": {"steps": 5, "student_images": 40}, "rng": r} for r in range(2)]
    ckpt = rank_entries(states)
    assert ckpt["counters"] == {"steps": 5, "student_images": 80} and ckpt["world_size"] == 2
    assert own_entries(ckpt, DistInfo(rank=1, world_size=2), "x/last.pt")["rng"] == 1
    with pytest.raises(CheckpointError, match=r"saved by a run of 2 process\(es\), and this run has 3"):
        own_entries(ckpt, DistInfo(rank=0, world_size=3), "x/last.pt")
    single = rank_entries(states[:1])
    assert single["rng"] == 0 and "ranks" not in single
    with pytest.raises(CheckpointError, match="nproc_per_node=1"):
        own_entries(single, DistInfo(rank=0, world_size=2), "x/last.pt")


def test_the_servers_count_is_summed_over_the_ranks_client_ids_only_where_it_is_per_client(monkeypatch):
    from student_trainer.engine import accounting
    from student_trainer.teachers import ServerStats

    own = [ServerStats(images=10, requests=2, bytes_in=100, bytes_out=5, forward_seconds=1.0, source="a",
                       per_client=True),
           ServerStats(images=6, requests=1, bytes_in=60, bytes_out=3, forward_seconds=0.5, source="b",
                       per_client=True)]
    monkeypatch.setattr(accounting, "gather_objects", lambda obj: own)
    total = accounting.summed_server(own[0])
    assert (total.images, total.requests, total.bytes_in, total.bytes_out) == (16, 3, 160, 8)
    wide = [ServerStats(images=16, requests=3, source="server-wide"), ServerStats(images=16, requests=3)]
    monkeypatch.setattr(accounting, "gather_objects", lambda obj: wide)
    assert accounting.summed_server(wide[0]) is wide[0]  # already every rank's
    gone = ServerStats.unavailable("no Stats")
    monkeypatch.setattr(accounting, "gather_objects", lambda obj: [own[0], gone])
    assert accounting.summed_server(own[0]) is gone


def test_the_losss_own_modules_are_averaged_over_the_ranks_too(teacher, tmp_path):
    """FitNet's regressor trains beside the student: its gradients are averaged by hand after backward, so
    both ranks hold the same regressor (each rank's copy is in the checkpoint) and it has moved."""
    url, _ = teacher
    out = tmp_path / "fitnet"
    ok(torchrun(2, train_args(out, "--query", "unix", "--loss", "fitnet", "--teacher-url", url, "--batch-size", "16",
                              "--k", "8", "--train-size", "64", "--wire-dtype", "float32", "--no-tensorboard")))
    ranks = saved(out)["ranks"]
    first, second = ranks[0]["distiller"]["loss"], ranks[1]["distiller"]["loss"]
    assert first and first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert summary(out)["steps"] == 4
