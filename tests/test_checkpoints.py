"""Checkpoints: read weights-only (a file cannot run code), and the layouts other KD projects write.

Real files throughout: a crafted file whose unpickling would create a marker file is refused by
the server, the exporter, ``local:`` teachers and the trainer's ``--resume`` without the marker
ever appearing; state dicts saved the way RepDistiller / mdistiller / UNIXKD / pytorch-cifar /
torchvision / DataParallel save them are served by the real gRPC server and answer the logits of
the model they came from.
"""
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.checkpoint import CheckpointError, make_checkpoint, plain, read_checkpoint_file, save_checkpoint
from common.models import build_model
from tests.conftest import train_args

ROOT = Path(__file__).resolve().parents[1]
IMAGES = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))


class WritesMarker:
    """Unpickling this calls ``open(marker, 'w')``: any code run at load time leaves the file behind."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _evil_checkpoint(tmp_path: Path, *, legacy: bool = False) -> tuple[Path, Path]:
    """A file that looks like ours (it would even resume), with a payload in ``meta``."""
    marker = tmp_path / "marker"
    ckpt = make_checkpoint(build_model("resnet8", 10), arch="resnet8", num_classes=10, input_shape=(3, 32, 32),
                           meta={"note": WritesMarker(marker)}, progress={}, rng={})
    path = tmp_path / "last.pt"
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    assert not marker.exists()
    return path, marker


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# --- weights-only: nothing in a file runs -------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_server_refuses_a_file_that_would_run_code(tmp_path, legacy):
    path, marker = _evil_checkpoint(tmp_path, legacy=legacy)
    r = subprocess.run([sys.executable, "-m", "teacher_server", "--checkpoint", str(path), "--port", "0",
                        "--log-level", "ERROR"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "refuses to load: it holds Python objects that could run code (" in line
    assert "open" in line  # names what it would have called
    assert not marker.exists()


def test_resume_refuses_a_file_that_would_run_code(tmp_path, capsys):
    from student_trainer.cli import main as train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path, marker = _evil_checkpoint(run_dir)
    with pytest.raises(SystemExit) as exit_info:
        train(train_args(run_dir, "--method", "ce", "--train-size", "32", "--resume", str(run_dir)))
    assert exit_info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(path) in line and "could run code" in line
    assert not marker.exists()


def test_export_and_local_teachers_refuse_it_too(tmp_path, capsys):
    from student_trainer.teachers import connect
    from teacher_server.export import main as export_main

    path, marker = _evil_checkpoint(tmp_path)
    with pytest.raises(SystemExit):
        export_main(["--checkpoint", str(path), "--format", "torchscript", "--out", str(tmp_path / "repo")])
    assert "could run code" in _one_error_line(capsys.readouterr().err)
    with pytest.raises(CheckpointError, match="could run code"):
        connect(f"local:{path}")
    assert not marker.exists() and not (tmp_path / "repo").exists()


def test_numpy_objects_are_refused_and_named(tmp_path):
    """What our checkpoints held before (numpy RNG state) is not loadable weights-only: the message says why."""
    path = tmp_path / "old.pt"
    torch.save({"rng": np.random.get_state()}, path)
    with pytest.raises(CheckpointError, match=r"could run code \(.*numpy"):
        read_checkpoint_file(path)


@pytest.mark.parametrize("content,fragment", [(b"not a checkpoint at all", "cannot read checkpoint"),
                                              (None, "does not exist")])
def test_unreadable_files_are_one_line(tmp_path, content, fragment):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=fragment) as info:
        read_checkpoint_file(path)
    assert "\n" not in str(info.value)


def test_rng_state_is_plain_and_restores_every_generator_exactly(tmp_path):
    from student_trainer.engine.run_state import rng_state, set_rng_state

    np.random.seed(7)
    random.seed(7)
    torch.manual_seed(7)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    path = tmp_path / "rng.pt"
    torch.save(rng_state(), path)
    draws = (np.random.standard_normal(3), np.random.randint(0, 1 << 30, 3), random.random(), torch.rand(3))
    set_rng_state(torch.load(path, weights_only=True))
    again = (np.random.standard_normal(3), np.random.randint(0, 1 << 30, 3), random.random(), torch.rand(3))
    assert np.array_equal(draws[0], again[0]) and np.array_equal(draws[1], again[1])
    assert draws[2] == again[2] and torch.equal(draws[3], again[3])


def test_plain_turns_flag_values_into_loadable_types(tmp_path):
    flags = {"out": Path("runs/x"), "shape": (1, 28, 28), "lr": np.float64(0.1), "ks": np.arange(2), "none": None}
    torch.save(plain(flags), tmp_path / "flags.pt")
    assert torch.load(tmp_path / "flags.pt", weights_only=True) == \
        {"out": "runs/x", "shape": (1, 28, 28), "lr": 0.1, "ks": [0, 1], "none": None}


# --- teachers from elsewhere ----------------------------------------------------------------------

def _trained_like(arch: str, num_classes: int = 10, seed: int = 1):
    """A zoo model with weights and BN statistics moved away from any initialisation (so a load that
    silently kept fresh weights would show in the logits)."""
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=num_classes)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.2)
    return model.eval()


def _expected_logits(model):
    with torch.no_grad():
        return model.eval()(IMAGES)


def _served_logits(path, **kw):
    """Load ``path`` as the server does and ask the real gRPC server for the logits."""
    from student_trainer.teachers import connect
    from common.teacher_model import load_teacher
    from teacher_server.server import build_server

    teacher = load_teacher(str(path), **kw)
    server, _, port = build_server(teacher, host="127.0.0.1", port=0, max_batch=16)
    try:
        with connect(f"grpc://127.0.0.1:{port}", wire_dtype="float32") as client:
            return teacher, client.infer(IMAGES, ["logits"])["logits"]
    finally:
        server.stop(grace=None).wait()


LAYOUTS = {
    "bare": lambda sd: sd,
    "repdistiller-model": lambda sd: {"epoch": 240, "model": sd, "accuracy": torch.tensor(72.3),
                                      "optimizer": {"state": {}, "param_groups": [{"lr": 0.0005}]}},
    "unixkd-state_dict": lambda sd: {"epoch": 240, "state_dict": sd, "best_acc": 72.3},
    "pytorch-cifar-net": lambda sd: {"net": sd, "acc": 93.1, "epoch": 199},
    "dataparallel-module-prefix": lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_foreign_layouts_serve_the_logits_of_the_model_they_came_from(tmp_path, layout):
    model = _trained_like("resnet8")
    path = tmp_path / "teacher.pth"
    torch.save(LAYOUTS[layout](model.state_dict()), path)
    teacher, got = _served_logits(path, arch="resnet8", num_classes=10)
    want = _expected_logits(model)
    assert (want - _expected_logits(build_model("resnet8", 10))).abs().max() > 0.1  # the check can tell
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert (teacher.arch, teacher.num_classes, teacher.input_shape) == ("resnet8", 10, (3, 32, 32))


def _repdistiller_resnet8_names() -> list[str]:
    """The parameter names of RepDistiller's ``resnet8`` (models/resnet.py), in its registration order."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names = ["conv1.weight", *(f"bn1.{p}" for p in bn)]
    for stage in (1, 2, 3):
        block = f"layer{stage}.0."
        names += [block + "conv1.weight", *(f"{block}bn1.{p}" for p in bn),
                  block + "conv2.weight", *(f"{block}bn2.{p}" for p in bn)]
        if stage > 1:
            names += [block + "downsample.0.weight", *(f"{block}downsample.1.{p}" for p in bn)]
    return names + ["fc.weight", "fc.bias"]


def test_repdistiller_names_are_matched_by_position(tmp_path, capsys):
    """RepDistiller's files name the same tensors differently (conv1 / layer1.0.bn1 / ...); in the same order."""
    model = _trained_like("resnet8")
    names, tensors = _repdistiller_resnet8_names(), list(model.state_dict().values())
    assert len(names) == len(tensors)
    theirs = dict(zip(names, tensors))
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": theirs, "accuracy": torch.tensor(70.1)}, path)
    teacher, got = _served_logits(path, arch="resnet8", num_classes=10)
    assert torch.allclose(got, _expected_logits(model), atol=1e-4, rtol=1e-4)

    # Without their BatchNorm counters (files from torch < 0.4.1) it still fits.
    torch.save({"model": {k: v for k, v in theirs.items() if not k.endswith("num_batches_tracked")}}, path)
    _, got = _served_logits(path, arch="resnet8", num_classes=10)
    assert torch.allclose(got, _expected_logits(model), atol=1e-4, rtol=1e-4)

    # Position is trusted only where shape and kind agree everywhere: a reordered file is refused.
    swapped = list(theirs.items())
    swapped[1], swapped[3] = swapped[3], swapped[1]  # bn1.weight <-> bn1.running_mean (same shape)
    torch.save({"model": dict(swapped)}, path)
    line = _serve_main(capsys, "--checkpoint", path, "--arch", "resnet8", "--num-classes", "10")
    assert "do not fit resnet8 with 10 classes: missing stem.0.weight" in line
    assert "unexpected conv1.weight" in line and "nor by position: tensor 1 is bn1.running_mean" in line


def test_torchvision_weights_served_by_the_server_process(tmp_path):
    """A torchvision weight file (a bare state dict of torchvision's own model), through ``python -m teacher_server``."""
    import torchvision

    from student_trainer.teachers import connect
    from common.launch import start_teacher, stop_teacher

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.1)
    path = tmp_path / "mobilenet_v3_small.pth"
    torch.save(model.state_dict(), path)
    log = (tmp_path / "server.log").open("w")
    try:
        proc, port = start_teacher("--checkpoint", path, "--arch", "torchvision.mobilenet_v3_small",
                                   "--num-classes", "10", "--port", "0", port_file=tmp_path / "port",
                                   timeout=120, stdout=log, cwd=ROOT)
    except (ChildProcessError, TimeoutError) as e:
        pytest.fail(f"{e}: {(tmp_path / 'server.log').read_text()}")
    try:
        with connect(f"grpc://127.0.0.1:{port}", wire_dtype="float32") as client:
            info = client.describe()
            got = client.infer(IMAGES, ["logits"])["logits"]
    finally:
        stop_teacher(proc, timeout=30)
    assert (info.arch, tuple(info.input_shape), info.num_classes) == \
        ("torchvision.mobilenet_v3_small", (3, 32, 32), 10)
    assert torch.allclose(got, _expected_logits(model), atol=1e-4, rtol=1e-4)


def _serve_main(capsys, *argv):
    from teacher_server.cli import main as serve_main

    with pytest.raises(SystemExit) as exit_info:
        serve_main([*map(str, argv), "--port", "0", "--log-level", "ERROR"])
    assert exit_info.value.code == 2
    return _one_error_line(capsys.readouterr().err)


def test_a_file_that_does_not_fit_the_arch_names_the_keys(tmp_path, capsys):
    path = tmp_path / "resnet8.pth"
    torch.save({"model": _trained_like("resnet8").state_dict()}, path)
    line = _serve_main(capsys, "--checkpoint", path, "--arch", "resnet14", "--num-classes", "10")
    assert "do not fit resnet14" in line and "missing stage1.1." in line
    assert "; nor by position: 77 tensors in the model, 47 in the file" in line
    line = _serve_main(capsys, "--checkpoint", path, "--arch", "wrn_16_1", "--num-classes", "10")
    assert "do not fit wrn_16_1" in line and "unexpected stem.0.weight" in line
    line = _serve_main(capsys, "--checkpoint", path, "--arch", "resnet8", "--num-classes", "100")
    assert "shape mismatch fc.weight (10, 64) in the file, (100, 64) in the model" in line


def test_a_foreign_file_needs_arch_and_num_classes(tmp_path, capsys):
    path = tmp_path / "bare.pth"
    torch.save(_trained_like("resnet8").state_dict(), path)
    line = _serve_main(capsys, "--checkpoint", path)
    assert "a bare state dict" in line and "give --arch and --num-classes" in line
    line = _serve_main(capsys, "--checkpoint", path, "--arch", "resnet8")
    assert "give --arch and --num-classes" in line
    torch.save({"weights": [1, 2, 3]}, path)
    line = _serve_main(capsys, "--checkpoint", path, "--arch", "resnet8", "--num-classes", "10")
    assert "holds a dict with keys weights" in line and "'model', 'state_dict' or 'net'" in line


def test_our_own_format_takes_its_facts_from_the_file_and_checks_given_flags(tmp_path, capsys):
    from common.teacher_model import load_teacher

    model = _trained_like("resnet8")
    path = tmp_path / "best.pt"
    save_checkpoint(make_checkpoint(model, arch="resnet8", num_classes=10, input_shape=(3, 32, 32)), path)
    teacher = load_teacher(str(path), arch="resnet8", num_classes=10, input_shape=(3, 32, 32))
    assert torch.allclose(teacher.forward(IMAGES, ["logits"])[0]["logits"], _expected_logits(model), atol=1e-5)
    line = _serve_main(capsys, "--checkpoint", path, "--arch", "resnet20")
    assert "unix-kd checkpoint with arch resnet8, but --arch resnet20 was given" in line
    line = _serve_main(capsys, "--checkpoint", path, "--input-shape", "1,28,28")
    assert "input-shape 3,32,32, but --input-shape 1,28,28" in line


def test_export_accepts_a_foreign_file(tmp_path):
    from teacher_server.export import main as export_main
    from teacher_server.export import run_exported

    model = _trained_like("resnet8")
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": model.state_dict()}, path)
    export_main(["--checkpoint", str(path), "--arch", "resnet8", "--num-classes", "10", "--format", "torchscript",
                 "--out", str(tmp_path / "repo")])  # (it also reloads the file and compares with the eager logits)
    got = run_exported(tmp_path / "repo" / "teacher", IMAGES)["logits"]
    assert torch.allclose(got, _expected_logits(model), atol=1e-4, rtol=1e-4)


def test_local_teacher_accepts_a_foreign_file(tmp_path):
    from student_trainer.teachers import connect

    model = _trained_like("resnet8")
    path = tmp_path / "teacher.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    with connect(f"local:{path}?arch=resnet8&num_classes=10&input_shape=3,32,32") as client:
        assert client.describe().arch == "resnet8"
        got = client.infer(IMAGES, ["logits"])["logits"]
    assert torch.allclose(got, _expected_logits(model), atol=1e-5)
    with pytest.raises(CheckpointError, match="give --arch and --num-classes"):
        connect(f"local:{path}")
    with pytest.raises(ValueError, match="unknown option 'classes'"):
        connect(f"local:{path}?arch=resnet8&classes=10")
    with pytest.raises(ValueError, match="num_classes"):
        connect(f"local:{path}?arch=resnet8&num_classes=ten")


# --- timm's files and the hub's ---------------------------------------------------------------------

def _timm_trained_like(name="resnet10t", seed=0):
    """A timm model straight from timm, its weights moved away from any initialisation."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    _nudge(model)
    return model.eval()


def _nudge(model):
    """Zero-mean changes to every weight (variances stay positive): logits move, but keep their scale."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(0.05 * (torch.rand_like(tensor) if name.endswith("running_var") else torch.randn_like(tensor)))


def test_a_timm_model_as_the_hubs_safetensors_is_served_with_timms_logits_and_features(tmp_path):
    """``model.safetensors`` as the hub holds it (timm's ``save_for_hf`` writes ``save_file(state_dict)``),
    through ``python -m teacher_server --arch timm.NAME``; logits and a reduced feature over gRPC."""
    from safetensors.torch import save_file

    from common.launch import start_teacher, stop_teacher
    from common.reductions import attention
    from student_trainer.teachers import connect

    model = _timm_trained_like()
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), path)
    log = (tmp_path / "server.log").open("w")
    try:
        proc, port = start_teacher("--checkpoint", path, "--arch", "timm.resnet10t", "--num-classes", "10",
                                   "--port", "0", port_file=tmp_path / "port", timeout=120, stdout=log, cwd=ROOT)
    except (ChildProcessError, TimeoutError) as e:
        pytest.fail(f"{e}: {(tmp_path / 'server.log').read_text()}")
    try:
        with connect(f"grpc://127.0.0.1:{port}", wire_dtype="float32") as client:
            info = client.describe()
            got = client.infer(IMAGES, ["logits", "stage3.attention"])
    finally:
        stop_teacher(proc, timeout=30)
    with torch.no_grad():
        maps = model.forward_intermediates(IMAGES, intermediates_only=True)
        want = model(IMAGES)
    assert (info.arch, tuple(info.input_shape), info.num_classes) == ("timm.resnet10t", (3, 32, 32), 10)
    assert {"stage0", "stage4", "pool"} <= set(info.feature_names)
    assert torch.allclose(got["logits"], want, atol=1e-4, rtol=1e-4)
    assert (want - _timm_trained_like(seed=1)(IMAGES)).abs().max() > 0.1  # the check can tell
    assert torch.allclose(got["stage3.attention"], attention(maps[3]), atol=1e-4, rtol=1e-4)
    assert "a safetensors file (the Hugging Face hub's model.safetensors), loaded into timm.resnet10t by name" \
        in (tmp_path / "server.log").read_text()


def _timm_training_checkpoint(tmp_path, model):
    """What timm's train.py leaves: CheckpointSaver's file, with the EMA weights and the flags (a Namespace)."""
    import argparse

    from timm.utils import CheckpointSaver, ModelEmaV3

    ema = ModelEmaV3(model, decay=0.5)
    _nudge(model)
    ema.update(model)  # now halfway between: different weights
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    args = argparse.Namespace(model="resnet10t", lr=0.1, epochs=3, data_dir="/data/imagenet")
    saver = CheckpointSaver(model, optimizer, args=args, model_ema=ema, checkpoint_dir=str(tmp_path))
    saver.save_checkpoint(epoch=2, metric=71.5)
    return tmp_path / "checkpoint-2.pth.tar", ema.module.eval()


def test_timms_training_checkpoint_serves_the_trained_weights_or_with_use_ema_the_ema(tmp_path, caplog):
    from common.teacher_model import load_teacher

    model = _timm_trained_like()
    path, ema = _timm_training_checkpoint(tmp_path, model)
    with caplog.at_level("INFO", logger="common.foreign_checkpoints"):
        teacher, got = _served_logits(path, arch="timm.resnet10t", num_classes=10)
    with torch.no_grad():
        assert torch.allclose(got, model.eval()(IMAGES), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(got, ema(IMAGES), atol=1e-2)
    assert "{'state_dict': state dict} file (UNIXKD reference, pytorch/examples, timm's train.py); the trained " \
           "weights, not the EMA ones under 'state_dict_ema' (--use-ema takes those)" in caplog.text
    _, got = _served_logits(path, arch="timm.resnet10t", num_classes=10, use_ema=True)
    with torch.no_grad():
        assert torch.allclose(got, ema(IMAGES), atol=1e-4, rtol=1e-4)
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    with pytest.raises(CheckpointError, match="holds no EMA weights .* leave out --use-ema"):
        load_teacher(str(bare), arch="timm.resnet10t", num_classes=10, use_ema=True)


def test_use_ema_reaches_every_place_that_reads_a_teacher(tmp_path, capsys):
    from student_trainer.teachers import connect
    from teacher_server.export import main as export_main

    model = _timm_trained_like()
    path, ema = _timm_training_checkpoint(tmp_path, model)
    with connect(f"local:{path}?arch=timm.resnet10t&num_classes=10&use_ema=1") as client:
        got = client.infer(IMAGES, ["logits"])["logits"]
    with torch.no_grad():
        assert torch.allclose(got, ema(IMAGES), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="use_ema: expected 0 or 1"):
        connect(f"local:{path}?arch=timm.resnet10t&num_classes=10&use_ema=yes")
    export_main(["--checkpoint", str(path), "--arch", "timm.resnet10t", "--num-classes", "10", "--use-ema",
                 "--format", "onnx", "--out", str(tmp_path / "repo")])  # (verified against the EMA model's logits)
    line = _serve_main(capsys, "--arch", "timm.resnet10t", "--use-ema")
    assert "--use-ema picks the EMA weights of a --checkpoint" in line


@pytest.mark.parametrize("content", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{not json", b"PK\x03\x04 a zip"])
def test_a_damaged_safetensors_file_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    line = _serve_main(capsys, "--checkpoint", path, "--arch", "timm.resnet10t", "--num-classes", "10")
    assert f"cannot read {path} as safetensors: " in line
