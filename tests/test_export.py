"""``python -m teacher_server.export``: a Triton model repository whose config parses with Triton's
own protobuf and whose model gives the eager logits (TorchScript in torch, ONNX in onnxruntime)."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from common.checkpoint import make_checkpoint, save_checkpoint
from common.reductions import parse_key, reduce
from common.teacher_model import load_teacher
from teacher_server.export import main as export_main

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

FEATURES = ["stem", "stage1", "stage2", "stage3", "pool"]
# Every output key in the exported model's order: each output in full, then its reductions.
SHAPES = {"logits": [10], "logits.pool": [10],
          "stem": [16, 28, 28], "stem.attention": [28, 28], "stem.pool": [16],
          "stage1": [16, 28, 28], "stage1.attention": [28, 28], "stage1.pool": [16],
          "stage2": [32, 14, 14], "stage2.attention": [14, 14], "stage2.pool": [32],
          "stage3": [64, 7, 7], "stage3.attention": [7, 7], "stage3.pool": [64],
          "pool": [64], "pool.pool": [64]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real checkpoint file as the trainer writes it: resnet8 on 1x28x28 images."""
    from common.models import build_model

    torch.manual_seed(1)
    model = build_model("resnet8", num_classes=10, in_channels=1)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(make_checkpoint(model, arch="resnet8", num_classes=10, input_shape=(1, 28, 28),
                                    meta={"name": "resnet8-test"}), path)
    return path


@pytest.fixture(scope="module")
def teacher(checkpoint):
    return load_teacher(str(checkpoint))


@pytest.fixture(scope="module", params=["torchscript", "onnx"])
def repository(request, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"repo-{request.param}")
    export_main(["--checkpoint", str(checkpoint), "--format", request.param, "--out", str(out),
                 "--max-batch", "32", "--queue-delay-us", "250", "--instances", "2"])
    return request.param, out / "teacher"


def _config(folder) -> mc.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())


def test_repository_layout_and_config(repository, teacher):
    fmt, folder = repository
    model_file = {"torchscript": "model.pt", "onnx": "model.onnx"}[fmt]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == \
        sorted(["config.pbtxt", f"1/{model_file}"])
    c = _config(folder)
    assert c.name == "teacher" and c.max_batch_size == 32
    assert (c.platform, c.backend) == {"torchscript": ("pytorch_libtorch", "pytorch"),
                                       "onnx": ("onnxruntime_onnx", "onnxruntime")}[fmt]
    assert c.HasField("dynamic_batching") and c.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(g.count, g.kind) for g in c.instance_group] == [(2, mc.ModelInstanceGroup.KIND_GPU)]
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == \
        [("images__0" if fmt == "torchscript" else "images", mc.TYPE_FP16, [1, 28, 28])]
    names = [f"{n}__{i}" if fmt == "torchscript" else n for i, n in enumerate(SHAPES)]
    assert [(o.name, o.data_type, list(o.dims)) for o in c.output] == \
        [(n, mc.TYPE_FP32, s) for n, s in zip(names, SHAPES.values())]
    params = {k: v.string_value for k, v in c.parameters.items()}
    assert params["arch"] == "resnet8" and params["teacher_name"] == "resnet8-test"
    assert float(params["flops_per_image"]) == pytest.approx(teacher.flops_per_image)


def _run(fmt, folder, images):
    c = _config(folder)
    if fmt == "torchscript":
        module = torch.jit.load(str(folder / "1" / "model.pt"))
        with torch.no_grad():
            return [t.numpy() for t in module(images)]
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(folder / "1" / "model.onnx"))
    session = onnxruntime.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [c.input[0].name]
    assert [o.name for o in session.get_outputs()] == [o.name for o in c.output]
    return session.run(None, {c.input[0].name: images.numpy()})


@pytest.mark.parametrize("batch", [1, 5])
def test_exported_model_gives_the_eager_logits_and_features(repository, teacher, batch):
    fmt, folder = repository
    images = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch)).half()
    expected, _ = teacher.forward(images, ["logits", *FEATURES])
    got = _run(fmt, folder, images)
    assert len(got) == len(SHAPES)
    for key, array in zip(SHAPES, got):
        assert array.shape == (batch, *SHAPES[key])
        name, reduction = parse_key(key)
        # the reduction the exported model computed = the client's own reduction of the eager feature
        want = reduce(reduction, expected[name]).numpy()
        np.testing.assert_allclose(array, want, atol=1e-5, rtol=1e-4, err_msg=key)


def test_the_triton_client_maps_libtorch_names_back():
    from student_trainer.teachers.triton_config import plain_name

    assert [plain_name(n) for n in ("logits__0", "stage1__2", "images", "pool", "stage3.attention__12")] == \
        ["logits", "stage1", "images", "pool", "stage3.attention"]


@pytest.mark.parametrize("argv,fragment", [
    (["--checkpoint", "/nonexistent.pt", "--format", "onnx", "--out", "x"], "does not exist"),
    (["--arch", "resnet8", "--format", "onnx", "--out", "x", "--max-batch", "0"], "--max-batch"),
])
def test_bad_input_is_one_line(argv, fragment, capsys, tmp_path):
    argv = [a if a != "x" else str(tmp_path / "repo") for a in argv]
    with pytest.raises(SystemExit) as exit_:
        export_main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


# --- timm -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("arch", ["timm.mobilenetv3_small_050", "timm.vit_tiny_patch16_224"])
def test_timm_models_export_with_their_named_features(tmp_path, arch, fmt):
    """A CNN and a ViT (its tokens as maps): the file answers the eager logits and every feature and reduction."""
    from teacher_server.export import run_exported

    out = tmp_path / "repo"
    export_main(["--arch", arch, "--input-shape", "3,32,32", "--format", fmt, "--out", str(out),
                 "--input-dtype", "float32"])  # (it also reloads the file and compares with the eager logits)
    teacher = load_teacher(arch=arch, input_shape=(3, 32, 32))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    got = run_exported(out / "teacher", images)
    assert list(got) == list(teacher.output_keys)
    expected, _ = teacher.forward(images, list(teacher.output_keys))
    for key, value in got.items():
        torch.testing.assert_close(torch.as_tensor(value), expected[key], atol=1e-5, rtol=1e-4, msg=key)
    assert {"stage4.attention", "pool"} <= set(got)


def test_a_timm_model_onnx_cannot_take_is_refused_in_one_line(tmp_path, capfd):
    """VOLO's outlook attention folds with col2im, which ONNX has only from opset 18 (we write 17)."""
    with pytest.raises(SystemExit) as exit_:
        export_main(["--arch", "timm.volo_d1_224", "--input-shape", "3,32,32", "--format", "onnx",
                     "--out", str(tmp_path / "repo")])
    assert exit_.value.code == 2
    out, err = capfd.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err  # (torch's exporter would print its graph)
    assert "timm.volo_d1_224 cannot be exported as onnx: Exporting the operator 'aten::col2im'" in err
