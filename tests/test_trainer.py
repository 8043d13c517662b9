"""The real trainer against the real server: counts, the k/N ratio, checkpoints, summaries, the run's
folder, and the data set the teacher says it was trained on."""
import json
import logging

import pytest
import torch

from common.checkpoint import load_checkpoint, model_from_checkpoint
from student_trainer.cli import main as train
from tests.conftest import fashion_mnist_or_skip, train_args


def _server_images(servicer):
    return servicer.counters.snapshot()["images"]


def test_unix_sends_exactly_k_images_per_full_step(grpc_teacher, tmp_path):
    url, servicer = grpc_teacher
    before = _server_images(servicer)
    s = train(train_args(tmp_path, "--method", "unix", "--teacher-url", url, "--batch-size", "16",
                         "--k", "12", "--b", "8", "--train-size", "80"))
    assert s["steps"] == 5 and s["student_images"] == 80
    assert s["teacher_images"] == 5 * 12 == _server_images(servicer) - before
    assert s["server_images_delta"] == s["teacher_images"]
    assert s["teacher_requests"] == s["server_requests_delta"] == 5
    assert s["bytes_sent"] == s["server_bytes_in_delta"]
    assert s["teacher_query_ratio"] == pytest.approx(12 / 16)
    assert s["student_forward_images"] == 80 + 60 and s["student_backward_images"] == 60
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["teacher_images"] == 60


def test_wall_seconds_is_the_runs_own_time(grpc_teacher, tmp_path):
    import time

    url, _ = grpc_teacher
    start = time.perf_counter()
    s = train(train_args(tmp_path, "--method", "unix", "--teacher-url", url, "--batch-size", "16",
                         "--k", "8", "--train-size", "32", "--epochs", "3", "--checkpoint-every", "1"))
    elapsed = time.perf_counter() - start
    assert 0 < s["wall_seconds"] <= elapsed
    assert sum(s["time_split"].values()) <= s["wall_seconds"]
    assert {"data", "uncertainty", "mixing", "teacher", "student", "eval", "checkpoint"} <= set(s["time_split"])


def test_kd_sends_every_image(grpc_teacher, tmp_path):
    url, servicer = grpc_teacher
    before = _server_images(servicer)
    s = train(train_args(tmp_path, "--method", "kd", "--teacher-url", url, "--batch-size", "16",
                         "--train-size", "64"))
    assert s["teacher_images"] == s["student_images"] == 64 == _server_images(servicer) - before
    assert s["compute_vs_kd"] == pytest.approx(1.0)


def test_last_partial_batch_scales_k(grpc_teacher, tmp_path):
    url, _ = grpc_teacher
    s = train(train_args(tmp_path, "--method", "unix", "--teacher-url", url, "--batch-size", "16",
                         "--k", "12", "--train-size", "72"))
    assert s["steps"] == 5
    assert s["teacher_images"] == 4 * 12 + 6 == s["server_images_delta"]


def test_compute_vs_kd_is_the_papers_formula(grpc_teacher, tmp_path):
    url, _ = grpc_teacher
    s = train(train_args(tmp_path, "--method", "unix", "--teacher-url", url, "--batch-size", "16",
                         "--k", "8", "--train-size", "32"))
    ft, fs, bs = s["teacher_flops_per_image"], s["student_flops_per_image"], s["student_backward_flops_per_image"]
    n, k = 16, 8
    assert s["compute_vs_kd"] == pytest.approx((k * ft + (n + k) * fs + k * bs) / (n * (ft + fs + bs)))
    assert bs > fs > 0  # measured, and backward costs more than forward


def test_max_steps_stops_mid_epoch(grpc_teacher, tmp_path):
    url, _ = grpc_teacher
    s = train(train_args(tmp_path, "--method", "unix", "--teacher-url", url, "--batch-size", "16",
                         "--k", "12", "--train-size", "160", "--max-steps", "3", "--epochs", "5"))
    assert s["steps"] == 3 and s["epochs"] == 0.3 and s["teacher_images"] == 36


def test_ce_trains_a_teacher_that_the_server_and_local_client_load(grpc_teacher, tmp_path):
    from student_trainer.teachers import connect
    from common.teacher_model import load_teacher

    s = train(train_args(tmp_path, "--method", "ce", "--batch-size", "32", "--train-size", "256",
                         "--epochs", "2", "--lr", "0.1"))
    assert s["teacher_images"] == 0 and s["teacher_requests"] == 0 and s["epochs"] == 2
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["arch"] == "resnet8" and ckpt["input_shape"] == (3, 32, 32) and ckpt["num_classes"] == 10
    assert ckpt["meta"]["method"] == "ce" and ckpt["meta"]["dataset"] == "synthetic"
    assert (tmp_path / "last.pt").is_file()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2]
    model = model_from_checkpoint(ckpt).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    with connect(f"local:{tmp_path / 'best.pt'}") as local:
        assert torch.allclose(local.infer(x)["logits"], want, atol=1e-5)
    assert torch.allclose(load_teacher(str(tmp_path / "best.pt")).forward(x, ["logits"])[0]["logits"], want,
                          atol=1e-5)


def test_a_trained_student_learns_the_synthetic_task(tmp_path):
    s = train(train_args(tmp_path, "--method", "ce", "--batch-size", "32", "--train-size", "1024",
                         "--test-size", "256", "--epochs", "2", "--lr", "0.1"))
    assert s["top1"] > 30.0  # 10 classes: chance is 10%


def test_teacher_for_other_data_is_refused(grpc_teacher, tmp_path, capsys):
    url, _ = grpc_teacher
    with pytest.raises(SystemExit) as e:
        train(train_args(tmp_path, "--method", "kd", "--teacher-url", url, "--num-classes", "5"))
    assert e.value.code == 2
    assert ("in 10 classes, but synthetic has 3x32x32 in 5: give --dataset the data set it was trained on"
            in capsys.readouterr().err)


def _files(run_dir) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path, capsys):
    flags = train_args(tmp_path, "--method", "ce", "--batch-size", "32", "--train-size", "64")  # TensorBoard on
    train(flags)
    first = _files(tmp_path)
    assert {"last.pt", "best.pt", "metrics.jsonl", "summary.json"} <= set(first)
    old_events = {p.name for p in (tmp_path / "tensorboard").iterdir()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train(flags)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"student_trainer: error: {tmp_path} holds a run already (best.pt, data.json, last.pt, metrics.jsonl, "
        f"summary.json, tensorboard): continue it with --resume {tmp_path}, or replace it with --overwrite"]
    assert _files(tmp_path) == first  # byte for byte

    train([*flags, "--epochs", "2", "--resume", str(tmp_path / "last.pt")])  # its own checkpoint: continued
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    s = train([*flags, "--overwrite", "--seed", "1"])
    assert s["seed"] == 1 and s["epochs"] == 1
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
    assert load_checkpoint(tmp_path / "best.pt")["meta"]["seed"] == 1
    new_events = {p.name for p in (tmp_path / "tensorboard").iterdir()}
    assert len(new_events) == 1 and not new_events & old_events  # the old run's events are gone


def test_without_dataset_the_run_trains_on_the_data_set_the_teacher_was_trained_on(shipped_grpc_teacher, tmp_path,
                                                                                   caplog):
    fashion_mnist_or_skip()
    with caplog.at_level(logging.INFO, logger="student_trainer"):
        s = train(["--teacher-url", shipped_grpc_teacher, "--method", "kd", "--max-steps", "2", "--batch-size", "16",
                   "--train-size", "32", "--test-size", "64", "--epochs", "1", "--workers", "0", "--no-progress",
                   "--no-tensorboard", "--out", str(tmp_path)])
    assert s["dataset"] == "fashion-mnist" and s["teacher_images"] == 32 == s["server_images_delta"]
    assert load_checkpoint(tmp_path / "last.pt")["input_shape"] == (1, 28, 28)
    assert ("training on fashion-mnist, the data set teacher fashion-mnist-resnet20 was trained on "
            "(--dataset to choose another)") in caplog.text


def test_the_data_set_is_the_flags_else_the_teachers_else_synthetic(shipped_grpc_teacher, grpc_teacher):
    from student_trainer.engine.build import dataset_name
    from student_trainer.teachers import connect

    given, not_given = "synthetic", None
    with connect(shipped_grpc_teacher) as says, connect(grpc_teacher[0]) as does_not_say:
        assert dataset_name(not_given, says) == "fashion-mnist" and dataset_name(given, says) == "synthetic"
        assert dataset_name(not_given, does_not_say) == "synthetic"
    assert dataset_name(not_given, None) == "synthetic"  # no teacher (ce)


def test_a_dataset_the_teacher_was_not_trained_on_is_refused_naming_its_own(shipped_grpc_teacher, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train(train_args(tmp_path, "--method", "kd", "--teacher-url", shipped_grpc_teacher))
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "student_trainer: error: teacher fashion-mnist-resnet20 takes 1x28x28 images in 10 classes, but synthetic "
        "has 3x32x32 in 10: train on its data set with --dataset fashion-mnist"]
