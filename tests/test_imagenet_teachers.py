"""ImageNet-sized teachers (224 px) served with the CLI's default flags: each starts and answers, on gRPC and
on Triton, and a request whose reply would pass gRPC's 2 GiB is refused in one line while the server goes
on; the trainer's client splits its batches so that it never sends one.

The models are random-init (nothing is downloaded) and slow on 2 cores: each is loaded once for the module,
and every forward here is of 1 or 2 images.
"""
import math
import tempfile
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import torch

from common import codec
from common.launch import start_teacher
from common.message_budget import bytes_per_image, images_that_fit
from common.teacher_model import load_teacher
from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc
from student_trainer.teachers import connect
from student_trainer.teachers.chunks import chunk_rows
from teacher_server import servicer as servicer_module
from teacher_server.cli import build_parser
from teacher_server.server import build_server
from teacher_server.servicer import GRPC_MESSAGE_CEILING, max_message_bytes
from tests.test_triton import _stop, triton_unavailable

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 224, 224)
ARCHS = ["timm.resnet50", "timm.vit_small_patch16_224", "timm.convnext_tiny", "timm.efficientnet_b0",
         "torchvision.resnet50"]
CLI = build_parser()
MAX_BATCH = CLI.get_default("max_batch")  # what a user gets without --max-batch


@pytest.fixture(scope="module")
def teachers():
    """``teachers(arch)``: the random 224 px teacher ``arch``, built once for the module (seconds each)."""
    loaded = {}

    def get(arch: str):
        if arch not in loaded:
            loaded[arch] = load_teacher(arch=arch, num_classes=10, input_shape=SHAPE, seed=0)
        return loaded[arch]

    return get


@contextmanager
def serving(teacher, max_batch: int = MAX_BATCH):
    """The gRPC server as ``python -m teacher_server`` builds it from its default flags; yields its address."""
    server, _, port = build_server(teacher, port=0, max_batch=max_batch,
                                   workers=CLI.get_default("workers"),
                                   queue_delay_us=CLI.get_default("queue_delay_us"))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()


def _images(n: int, seed: int = 0, shape=SHAPE) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_each_imagenet_teacher_starts_with_default_flags_and_answers_a_224_px_batch(teachers, arch):
    teacher = teachers(arch)
    with serving(teacher) as address, connect(f"grpc://{address}", wire_dtype="float32") as client:
        info = client.describe()
        assert info.max_batch_size == MAX_BATCH and tuple(info.input_shape) == SHAPE
        assert info.max_message_bytes == max_message_bytes(teacher, MAX_BATCH) <= GRPC_MESSAGE_CEILING
        x = _images(2)
        got = client.infer(x)["logits"]
        expected, _ = teacher.forward(x, ["logits"])
        assert got.shape == (2, 10) and torch.allclose(got, expected["logits"], rtol=1e-4, atol=1e-5)


def test_a_reply_over_the_message_limit_is_refused_in_one_line_and_the_server_goes_on(teachers):
    """torchvision's resnet50 at 224 px: every key of ~160 images passes 2 GiB, far below the default max
    batch. Refused before any forward, saying how many images fit; the client's own sum gives that number."""
    teacher = teachers("torchvision.resnet50")
    keys = list(teacher.output_keys)
    fit = images_that_fit(GRPC_MESSAGE_CEILING, bytes_per_image(teacher.output_shapes, keys, 4))
    assert 1 <= fit < MAX_BATCH
    too_many = codec.encode(torch.zeros(fit + 1, *SHAPE, dtype=torch.float16), pb.FLOAT16)
    with serving(teacher) as address, grpc.insecure_channel(
            address, options=[("grpc.max_send_message_length", -1)]) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.TeacherStub(channel).Infer(pb.InferRequest(images=too_many, outputs=keys,
                                                               output_dtype=pb.FLOAT32), timeout=120)
        details = err.value.details()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "\n" not in details and len(details) < 400, details
        assert "message limit" in details and f"at most {fit} images" in details, details
        with connect(f"grpc://{address}", wire_dtype="float16") as client:
            assert chunk_rows(client.describe(), keys, math.prod(SHAPE) * 2, 4) == fit  # it would split there
            assert client.infer(_images(1))["logits"].shape == (1, 10)  # still serving


def test_the_client_splits_a_batch_so_every_reply_fits_the_servers_message_limit(monkeypatch):
    """The same sum on a small model, with the ceiling lowered to 3 MiB so that a few images fill it:
    a batch asking for every feature map goes as several requests, each answered, put back in order."""
    monkeypatch.setattr(servicer_module, "GRPC_MESSAGE_CEILING", 3 << 20)
    teacher = load_teacher(arch="resnet8", num_classes=10, input_shape=(3, 32, 32), seed=0)
    keys = ["logits", *teacher.feature_names]
    with serving(teacher, max_batch=64) as address, connect(f"grpc://{address}", wire_dtype="float32") as client:
        info = client.describe()
        assert info.max_message_bytes == 3 << 20
        size = chunk_rows(info, keys, 3 * 32 * 32 * 4, 4)
        assert 1 <= size < 64
        x = _images(64, shape=(3, 32, 32))
        got = client.infer(x, outputs=keys)
        assert client.counters.requests == math.ceil(64 / size)
    expected, _ = teacher.forward(x, keys)
    for key in keys:
        assert torch.allclose(got[key], expected[key], rtol=1e-4, atol=1e-5), key


def test_an_imagenet_teacher_starts_on_triton_with_default_flags_and_answers(teachers):
    """Triton can refuse a request only by its image count: its max batch becomes what fits in 2 GiB with
    every output (timm's resnet50: 230 images instead of 256), said in one line at start."""
    reason = triton_unavailable()
    if reason:
        pytest.skip(reason)
    from teacher_server.triton_backend import triton_max_batch

    teacher = teachers("timm.resnet50")
    fits = triton_max_batch(teacher, MAX_BATCH, CLI.get_default("input_dtype"))
    assert fits < MAX_BATCH
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with log.open("w") as out:
            proc, port = start_teacher("--backend", "triton", "--arch", "timm.resnet50", "--num-classes", "10",
                                       "--input-shape", ",".join(map(str, SHAPE)), "--port", "0",
                                       "--http-port", "0", "--metrics-port", "0",
                                       port_file=Path(tmp) / "port", stdout=out, cwd=ROOT, timeout=180)
        try:
            with connect(f"triton://127.0.0.1:{port}/teacher", wire_dtype="float16") as client:
                assert client.describe().max_batch_size == fits
                x = _images(2)
                got = client.infer(x)["logits"]
            expected, _ = teacher.forward(x.half().float(), ["logits"])
            assert torch.allclose(got, expected["logits"], rtol=1e-3, atol=1e-4)
            assert f"max batch {fits} on Triton instead of {MAX_BATCH}" in log.read_text()
        finally:
            assert _stop(proc) == 0, log.read_text()[-3000:]
