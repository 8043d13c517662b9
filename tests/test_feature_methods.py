"""Every distillation loss with every query policy, against the real gRPC teacher; the step's contracts."""
import json
from pathlib import Path

import pytest
import torch

from student_trainer.cli import main as train
from student_trainer.distill import LOSSES
from tests.conftest import train_args

FEATURE_AND_LOGIT_LOSSES = [name for name, cls in LOSSES.items() if cls.needs_teacher] + ["kd+at"]


def _flags(url, out, *extra):
    return train_args(out, "--teacher-url", url, "--batch-size", "16", "--k", "12", "--train-size", "64",
                      "--wire-dtype", "float32", "--no-tensorboard", *extra)


def _summary(run_dir) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def _last(run_dir) -> dict:
    return torch.load(Path(run_dir) / "last.pt", weights_only=True)


@pytest.mark.parametrize("loss", FEATURE_AND_LOGIT_LOSSES)
@pytest.mark.parametrize("query", ["all", "unix"])
def test_every_loss_trains_over_the_wire_with_every_selection(grpc_teacher, tmp_path, loss, query):
    url, servicer = grpc_teacher
    before = servicer.counters.snapshot()["images"]
    s = train(_flags(url, tmp_path, "--loss", loss, "--query", query, "--max-steps", "2"))
    assert s["steps"] == 2 and s["loss"] == loss and s["query"] == query
    assert s["teacher_images"] == (32 if query == "all" else 24) == servicer.counters.snapshot()["images"] - before
    ft, fs, bs, lo = (s[f] for f in ("teacher_flops_per_image", "student_flops_per_image",
                                      "student_backward_flops_per_image", "loss_flops_per_image"))
    n, k = 16, s["k"]
    extra = n if query == "unix" else 0  # the uncertainty pass
    assert k == (16 if query == "all" else 12)
    assert s["compute_vs_kd"] == pytest.approx((k * ft + (k + extra) * fs + k * (bs + lo)) / (n * (ft + fs + bs + lo)))
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("loss_") and k != "loss_ce" for k in lines[-1])


def test_feature_losses_ask_the_server_for_reduced_maps_and_cost_fewer_bytes(grpc_teacher, tmp_path):
    url, _ = grpc_teacher
    at = train(_flags(url, tmp_path / "at", "--loss", "at", "--query", "all", "--max-steps", "1"))
    full = train(_flags(url, tmp_path / "vid", "--loss", "vid", "--query", "all", "--max-steps", "1"))
    kd = train(_flags(url, tmp_path / "kd", "--loss", "kd", "--query", "all", "--max-steps", "1"))
    # resnet8's stages are 16x32x32, 32x16x16, 64x8x8: AT's three maps are 16x fewer floats than VID's
    assert kd["bytes_received"] < at["bytes_received"] < full["bytes_received"] / 10


def test_a_learnable_regressor_trains_and_resumes_bit_exactly(grpc_teacher, tmp_path):
    url, _ = grpc_teacher
    flags = ("--loss", "fitnet", "--query", "unix", "--epochs", "2", "--milestones", "1")
    train(_flags(url, tmp_path / "straight", *flags))
    train(_flags(url, tmp_path / "split", *flags, "--max-steps", "5"))
    train(_flags(url, tmp_path / "split", *flags, "--resume", str(tmp_path / "split")))
    a, b = _last(tmp_path / "straight"), _last(tmp_path / "split")
    loss_a, loss_b = a["distiller"]["loss"], b["distiller"]["loss"]
    assert any("regressor" in k or "reg" in k for k in loss_a), list(loss_a)
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    for name in loss_a:
        assert torch.equal(loss_a[name], loss_b[name]), name
    # the regressor moved: the optimiser trains it
    fresh = train(_flags(url, tmp_path / "fresh", *flags, "--max-steps", "1", "--lr", "0"))
    assert fresh["steps"] == 1
    zero = _last(tmp_path / "fresh")["distiller"]["loss"]
    assert any(not torch.equal(zero[k], loss_a[k]) for k in zero if zero[k].is_floating_point())


def test_overlapping_the_teacher_with_the_student_is_bit_identical_to_serial(grpc_teacher, tmp_path):
    url, _ = grpc_teacher
    flags = ("--loss", "kd+at", "--query", "unix", "--max-steps", "4")
    serial = train(_flags(url, tmp_path / "serial", *flags, "--serial-teacher"))
    overlap = train(_flags(url, tmp_path / "overlap", *flags))
    a, b = _last(tmp_path / "serial"), _last(tmp_path / "overlap")
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    assert serial["teacher_images"] == overlap["teacher_images"] and serial["top1"] == overlap["top1"]


def test_method_shorthands_are_their_query_and_loss(grpc_teacher, tmp_path):
    url, _ = grpc_teacher
    short = train(_flags(url, tmp_path / "short", "--method", "unix", "--max-steps", "2"))
    long = train(_flags(url, tmp_path / "long", "--query", "unix", "--loss", "kd", "--max-steps", "2"))
    assert short["method"] == long["method"] == "unix"
    a, b = _last(tmp_path / "short"), _last(tmp_path / "long")
    assert all(torch.equal(a["state_dict"][n], b["state_dict"][n]) for n in a["state_dict"])


@pytest.mark.parametrize("flags, message", [
    (("--loss", "fitnet", "--feature-pairs", "stage2:stage9"),
     "unknown teacher feature 'stage9' in pair stage2:stage9; student offers stem 16x32x32"),
    (("--loss", "at", "--feature-pairs", "pool:pool"), "cannot pair student pool"),
    (("--loss", "kd", "--feature-pairs", "stage2:stage2"), "takes no --feature-pairs"),
    (("--loss", "kd+nope",), "unknown --loss 'kd+nope'"),
    (("--method", "kd", "--loss", "at"), "give --method alone, or --query and --loss; not both"),
])
def test_a_wrong_method_flag_is_one_line(grpc_teacher, tmp_path, capsys, flags, message):
    url, _ = grpc_teacher
    with pytest.raises(SystemExit) as e:
        train(_flags(url, tmp_path, *flags, "--max-steps", "1"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and message in err and "Traceback" not in err and len(err.splitlines()) == 1, err


@pytest.fixture(scope="module")
def local_teacher(tmp_path_factory):
    """A checkpoint for a local: teacher (the same model in-process, no wire)."""
    from common.checkpoint import make_checkpoint, save_checkpoint
    from common.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("local") / "teacher.pt"
    save_checkpoint(make_checkpoint(build_model("resnet8", 10), arch="resnet8", num_classes=10,
                                    input_shape=(3, 32, 32)), path)
    return f"local:{path}"


@pytest.mark.parametrize("loss", FEATURE_AND_LOGIT_LOSSES)
def test_every_loss_trains_with_an_in_process_teacher(local_teacher, tmp_path, loss):
    s = train(_flags(local_teacher, tmp_path, "--loss", loss, "--query", "unix", "--max-steps", "2"))
    assert s["steps"] == 2 and s["teacher_images"] == 24 and s["bytes_sent"] == 0


@pytest.fixture(scope="module")
def timm_teacher(tmp_path_factory):
    """A timm resnet10t saved as the hub's model.safetensors, served as ``--arch timm.resnet10t`` over gRPC."""
    import timm
    from safetensors.torch import save_file

    from common.teacher_model import load_teacher
    from teacher_server.server import build_server

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("timm") / "model.safetensors"
    save_file(timm.create_model("resnet10t", pretrained=False, num_classes=10).state_dict(), path)
    teacher = load_teacher(str(path), arch="timm.resnet10t", num_classes=10, input_shape=(3, 32, 32))
    server, servicer, port = build_server(teacher, host="127.0.0.1", port=0, max_batch=64)
    yield f"grpc://127.0.0.1:{port}", servicer
    server.stop(grace=None).wait()


@pytest.mark.parametrize("loss, pairs, part", [
    ("fitnet", "stage3:stage2", "loss_fitnet"),         # the student's 64x8x8 map to timm's layer2, 128x4x4
    ("kd+at", "stage2:stage1,stage3:stage2", "loss_at"),  # timm's maps reduced to attention on the server
])
def test_a_feature_loss_trains_against_a_timm_teacher_with_named_pairs(timm_teacher, tmp_path, loss, pairs, part):
    url, servicer = timm_teacher
    before = servicer.counters.snapshot()["images"]
    s = train(_flags(url, tmp_path, "--loss", loss, "--feature-pairs", pairs, "--query", "all", "--max-steps", "2"))
    assert s["steps"] == 2 and s["teacher_images"] == 32 == servicer.counters.snapshot()["images"] - before
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last[part] > 0


def test_a_pair_a_timm_teacher_does_not_offer_names_what_it_does(timm_teacher, tmp_path, capsys):
    url, _ = timm_teacher
    with pytest.raises(SystemExit):
        train(_flags(url, tmp_path, "--loss", "at", "--feature-pairs", "stage3:layer3", "--max-steps", "1"))
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown teacher feature 'layer3'" in err
    assert "teacher offers stage0 64x16x16, stage1 64x8x8, stage2 128x4x4, stage3 256x2x2, stage4 512x1x1, pool 512" in err
