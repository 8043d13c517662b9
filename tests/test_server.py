"""The gRPC teacher service, over a real channel: answers, features, counters, bad requests."""
import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import codec
from common.flops import forward_flops_per_image
from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc
from student_trainer.teachers import connect


@pytest.fixture()
def stub(grpc_teacher):
    url, _ = grpc_teacher
    channel = grpc.insecure_channel(url.removeprefix("grpc://"))
    yield pb_grpc.TeacherStub(channel), channel
    channel.close()


def _images(n, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("wire,tol", [("float32", 1e-5), ("float16", 2e-2), ("bfloat16", 1e-1), ("uint8", 2e-1)])
def test_logits_over_the_wire_equal_the_in_process_forward(grpc_teacher, random_teacher, wire, tol):
    url, _ = grpc_teacher
    x = _images(8)
    expected, _ = random_teacher.forward(x, ["logits"])
    with connect(url, wire_dtype=wire) as client:
        got = client.infer(x)["logits"]
    assert got.shape == (8, 10) and got.dtype == torch.float32
    assert torch.allclose(got, expected["logits"], atol=tol, rtol=tol)


def test_features_over_the_wire(grpc_teacher, random_teacher):
    url, _ = grpc_teacher
    names = random_teacher.feature_names
    assert "pool" in names
    x = _images(4)
    expected, _ = random_teacher.forward(x, ["logits", *names])
    with connect(url, wire_dtype="float32") as client:
        got = client.infer(x, outputs=["logits", *names])
    for name in names:
        assert got[name].shape == expected[name].shape
        assert torch.allclose(got[name], expected[name], atol=1e-5)


def test_describe_reports_the_model(grpc_teacher, random_teacher, stub):
    s, _ = stub
    d = s.Describe(pb.DescribeRequest())
    assert (d.arch, list(d.input_shape), d.num_classes, d.max_batch_size) == ("resnet8", [3, 32, 32], 10, 64)
    assert list(d.feature_names) == random_teacher.feature_names
    assert d.flops_per_image == pytest.approx(forward_flops_per_image(random_teacher.model, (3, 32, 32)))
    assert d.max_message_bytes >= 64 * 3 * 32 * 32 * 4


def test_describe_says_the_data_set_the_checkpoint_records_and_nothing_where_it_records_none(shipped_grpc_teacher,
                                                                                              stub):
    with grpc.insecure_channel(shipped_grpc_teacher.removeprefix("grpc://")) as channel:
        assert pb_grpc.TeacherStub(channel).Describe(pb.DescribeRequest()).dataset == "fashion-mnist"
    s, _ = stub  # random weights: no checkpoint to say
    assert s.Describe(pb.DescribeRequest()).dataset == ""


def test_batches_over_max_batch_are_split_by_the_client(grpc_teacher, random_teacher):
    url, servicer = grpc_teacher
    before = servicer.counters.snapshot()
    with connect(url, wire_dtype="float32") as client:
        got = client.infer(_images(150))["logits"]
        assert client.counters.requests == 3 and client.counters.images == 150
    after = servicer.counters.snapshot()
    assert got.shape == (150, 10)
    assert after["images"] - before["images"] == 150
    assert after["requests"] - before["requests"] == 3


def test_client_and_server_count_the_same_bytes(grpc_teacher):
    url, servicer = grpc_teacher
    with connect(url) as client:
        before = client.server_stats()
        for n in (1, 7, 48):
            client.infer(_images(n))
        after = client.server_stats()
        c = client.counters
    assert after.images - before.images == c.images == 56
    assert after.bytes_in - before.bytes_in == c.bytes_sent
    assert after.bytes_out - before.bytes_out == c.bytes_received
    # float16 images: the payload is 2 bytes a value plus a few bytes of framing per request
    assert 56 * 3 * 32 * 32 * 2 <= c.bytes_sent < 56 * 3 * 32 * 32 * 2 + 3 * 200


def _request(images=None, **kw):
    images = _images(2) if images is None else images
    return pb.InferRequest(images=codec.encode(images, "float32"), **kw)


def _bad(**changes):
    r = _request()
    for path, value in changes.items():
        if path == "shape":
            del r.images.shape[:]
            r.images.shape.extend(value)
        elif path == "data":
            r.images.data = value
        elif path == "dtype":
            r.images.dtype = value
        else:
            setattr(r, path, value)
    return r


@pytest.mark.parametrize("request_,code,fragment", [
    (pb.InferRequest(), grpc.StatusCode.INVALID_ARGUMENT, "no images"),
    (_bad(shape=[2, 3, 32]), grpc.StatusCode.INVALID_ARGUMENT, "must have shape [N, 3, 32, 32]"),
    (_bad(shape=[2, 1, 32, 32]), grpc.StatusCode.INVALID_ARGUMENT, "got [2, 1, 32, 32]"),
    (_bad(shape=[0, 3, 32, 32], data=b""), grpc.StatusCode.INVALID_ARGUMENT, "at least 1 image"),
    (_request(_images(65)), grpc.StatusCode.RESOURCE_EXHAUSTED, "max batch 64"),
    (_bad(data=b"\0" * 10), grpc.StatusCode.INVALID_ARGUMENT, "needs 24576 bytes, got 10"),
    (_bad(dtype=42), grpc.StatusCode.INVALID_ARGUMENT, "unknown dtype"),
    (_request(outputs=["logits", "nope"]), grpc.StatusCode.INVALID_ARGUMENT, "outputs must be"),
    (_request(output_dtype=17), grpc.StatusCode.INVALID_ARGUMENT, "output dtype"),
    (_request(torch.full((2, 3, 32, 32), float("nan"))), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
])
def test_bad_requests_get_a_clear_code_and_the_server_keeps_serving(stub, random_teacher, request_, code, fragment):
    s, _ = stub
    with pytest.raises(grpc.RpcError) as err:
        s.Infer(request_)
    assert err.value.code() == code
    assert fragment in err.value.details()
    ok = s.Infer(_request(request_id="after"))
    assert ok.request_id == "after"
    expected, _ = random_teacher.forward(_images(2), ["logits"])
    assert torch.allclose(codec.decode(ok.outputs["logits"]), expected["logits"], atol=1e-5)


def test_health_service_says_serving(stub):
    _, channel = stub
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "unixkd.teacher.v1.Teacher"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_server_whose_biggest_reply_exceeds_grpcs_ceiling_starts_and_answers(caplog):
    """Every full feature map of a max batch can pass 2 GiB (ImageNet-sized inputs, default --max-batch):
    gRPC's message options are C ints, so the limit is capped there instead of failing at start."""
    from common.teacher_model import load_teacher
    from teacher_server.server import build_server
    from teacher_server.servicer import GRPC_MESSAGE_CEILING, needed_message_bytes

    teacher = load_teacher(arch="resnet8", num_classes=10, input_shape=(3, 64, 64))
    assert needed_message_bytes(teacher, 4096) > GRPC_MESSAGE_CEILING
    with caplog.at_level("WARNING", logger="teacher_server"):
        server, _, port = build_server(teacher, port=0, max_batch=4096)
    try:
        assert any("over gRPC's 2 GiB a message" in r.getMessage() for r in caplog.records)
        with connect(f"grpc://127.0.0.1:{port}", wire_dtype="float32") as client:
            assert client.describe().max_batch_size == 4096
            x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
            expected, _ = teacher.forward(x, ["logits"])
            assert torch.allclose(client.infer(x)["logits"], expected["logits"], atol=1e-5)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        assert pb_grpc.TeacherStub(channel).Describe(pb.DescribeRequest()).max_message_bytes == GRPC_MESSAGE_CEILING
        channel.close()
    finally:
        server.stop(grace=None).wait()
