"""Server-side reductions (``common.reductions``): the functions against hand computation, and the
same reductions asked of the real gRPC server (keys ``NAME.REDUCTION``) against the in-process model."""
import re

import grpc
import pytest
import torch
from torch import nn

from common import codec, reductions
from common.reductions import attention, check_key, offered_keys, parse_key, pool, reduce, reduced_shape
from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc
from student_trainer.teachers import connect

# resnet8 on 3x32x32 (the conftest teacher), per image, worked out by hand from the architecture
FULL = {"logits": (10,), "stem": (16, 32, 32), "stage1": (16, 32, 32), "stage2": (32, 16, 16),
        "stage3": (64, 8, 8), "pool": (64,)}


# --- the functions -------------------------------------------------------------------------------

def test_attention_is_the_channel_mean_of_squares_by_hand():
    f = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]],            # image 0: C=2, H=1, W=2
                      [[[0.5, 0.0]], [[-0.5, 4.0]]]])           # image 1
    a = attention(f)
    assert a.shape == (2, 1, 2)
    assert a.tolist() == [[[(1 + 9) / 2, (4 + 0) / 2]], [[(0.25 + 0.25) / 2, (0 + 16) / 2]]]


def test_pool_is_the_spatial_mean_by_hand_and_the_identity_on_vectors():
    f = torch.arange(16, dtype=torch.float32).reshape(2, 2, 2, 2)  # N=2, C=2, 2x2
    assert pool(f).tolist() == [[1.5, 5.5], [9.5, 13.5]]
    v = torch.randn(3, 7)
    assert pool(v) is v
    x = torch.randn(2, 3, 4, 4)
    assert reduce("none", x) is x


@pytest.mark.parametrize("fn,shape", [(attention, (2, 5)), (attention, (2, 3, 4)), (attention, (2, 1, 3, 4, 4)),
                                      (pool, (2, 3, 4)), (pool, (2,))])
def test_impossible_shapes_are_refused(fn, shape):
    with pytest.raises(ValueError, match="needs a 4-D feature map"):
        fn(torch.zeros(shape))


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="unknown reduction 'max'"):
        reduce("max", torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="unknown reduction 'max'"):
        reduced_shape("max", (2, 2, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_is_kept(dtype):
    f = torch.randn(2, 3, 4, 4).to(dtype)
    for name in reductions.REDUCTIONS:
        assert reduce(name, f).dtype == dtype, name
    assert pool(torch.randn(2, 3).to(dtype)).dtype == dtype


def test_half_precision_sums_do_not_overflow():
    f = torch.full((1, 4, 2, 2), 200.0, dtype=torch.float16)  # 200^2 = 40000 fits, a sum of four does not
    assert attention(f).tolist() == [[[40000.0, 40000.0], [40000.0, 40000.0]]]
    g = torch.full((1, 1, 4, 4), 60000.0, dtype=torch.float16)  # the spatial sum, 960000, overflows float16
    assert pool(g).tolist() == [[60000.0]]


def test_reductions_are_differentiable():
    f = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(attention, (f,))
    assert torch.autograd.gradcheck(pool, (f,))
    attention(f).sum().backward()
    assert torch.allclose(f.grad, 2 * f.detach() / 3)  # d/df mean_c f^2 = 2 f / C
    with torch.inference_mode():  # ... and usable where no graph is wanted (the server)
        assert attention(torch.ones(1, 2, 2, 2)).tolist() == [[[1.0, 1.0], [1.0, 1.0]]]


def test_keys():
    assert parse_key("stage3.attention") == ("stage3", "attention")
    assert parse_key("stage3") == ("stage3", "none") and parse_key("logits") == ("logits", "none")
    assert parse_key("stage3.") == ("stage3", "")
    for key in ("logits", "stage3", "stage3.attention", "pool.pool"):
        assert reductions.make_key(*parse_key(key)) == key


@pytest.mark.parametrize("reduction,shape,want", [
    ("none", (64, 8, 8), (64, 8, 8)), ("attention", (64, 8, 8), (8, 8)), ("pool", (64, 8, 8), (64,)),
    ("none", (10,), (10,)), ("pool", (10,), (10,)), ("attention", (16, 32, 32), (32, 32))])
def test_reduced_shape_agrees_with_the_functions(reduction, shape, want):
    assert reduced_shape(reduction, shape) == want
    assert tuple(reduce(reduction, torch.randn(3, *shape)).shape[1:]) == want


@pytest.mark.parametrize("reduction,shape", [("attention", (64,)), ("attention", (3, 4)), ("pool", (3, 4)),
                                             ("attention", (1, 2, 3, 4))])
def test_reduced_shape_refuses_impossible_combinations(reduction, shape):
    with pytest.raises(ValueError):
        reduced_shape(reduction, shape)


def test_offered_keys_and_check_key():
    keys = offered_keys(FULL)
    assert keys == {"logits": (10,), "logits.pool": (10,),
                    "stem": (16, 32, 32), "stem.attention": (32, 32), "stem.pool": (16,),
                    "stage1": (16, 32, 32), "stage1.attention": (32, 32), "stage1.pool": (16,),
                    "stage2": (32, 16, 16), "stage2.attention": (16, 16), "stage2.pool": (32,),
                    "stage3": (64, 8, 8), "stage3.attention": (8, 8), "stage3.pool": (64,),
                    "pool": (64,), "pool.pool": (64,)}
    for key in keys:
        assert check_key(key, FULL) == parse_key(key)
    for key, fragment in [("nope.pool", "unknown output 'nope'"), ("stage3.max", "unknown reduction 'max'"),
                          ("stage3.none", "write NAME for the full output"),
                          ("pool.attention", "attention applies to a (C, H, W) map per image, and pool is (64,)"),
                          ("logits.attention", "logits is (10,)")]:
        assert key not in keys
        with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            check_key(key, FULL)


# --- the model runner ----------------------------------------------------------------------------

def test_the_teacher_measures_its_shapes_once_and_they_are_the_forward_shapes(random_teacher):
    assert random_teacher.output_shapes == FULL
    assert random_teacher.output_keys == offered_keys(FULL)
    x = torch.randn(3, 3, 32, 32)
    got, _ = random_teacher.forward(x, list(random_teacher.output_keys))
    assert {k: tuple(t.shape[1:]) for k, t in got.items()} == random_teacher.output_keys
    assert all(t.shape[0] == 3 and t.dtype == torch.float32 for t in got.values())


def test_one_forward_serves_every_key(random_teacher):
    calls = []
    handle = random_teacher.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        x = torch.randn(2, 3, 32, 32)
        got, _ = random_teacher.forward(x, ["stage1.attention", "stage1.pool", "stage3", "logits.pool"])
    finally:
        handle.remove()
    assert len(calls) == 1 and list(got) == ["stage1.attention", "stage1.pool", "stage3", "logits.pool"]
    full, _ = random_teacher.forward(x, ["stage1", "logits"])
    assert torch.allclose(got["stage1.attention"], attention(full["stage1"]), atol=1e-6)
    assert torch.allclose(got["stage1.pool"], pool(full["stage1"]), atol=1e-6)
    assert torch.equal(got["logits.pool"], full["logits"])
    with pytest.raises(ValueError, match="unknown output 'nope'"):
        random_teacher.forward(x, ["nope.pool"])


def test_a_feature_name_with_the_separator_is_refused_at_load():
    from common.teacher_model import TeacherModel

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3)).eval()
    model.feature_layers = {"conv.out": "0"}
    with pytest.raises(ValueError, match=r"feature names \['conv.out'\] cannot be served"):
        TeacherModel(model, "toy", "toy", (1, 8, 8), 3, torch.device("cpu"), torch.float32, 0.0)
    model.feature_layers = {"conv": "0"}
    t = TeacherModel(model, "toy", "toy", (1, 8, 8), 3, torch.device("cpu"), torch.float32, 0.0)
    assert t.output_shapes == {"logits": (3,), "conv": (2, 6, 6)}


# --- over the real gRPC server -------------------------------------------------------------------

def _images(n, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


KEYS = ["logits", "stage1", "stage1.attention", "stage2.attention", "stage3.attention", "stage3.pool",
        "stage3", "pool", "pool.pool", "logits.pool"]


@pytest.mark.parametrize("wire", ["float32", "float16"])
def test_reductions_on_the_server_equal_the_same_reductions_on_the_client(grpc_teacher, random_teacher, wire):
    url, _ = grpc_teacher
    x = _images(6)
    sent = x.to(getattr(torch, wire)).float()  # what the server computes on
    full, _ = random_teacher.forward(sent, list(FULL))
    with connect(url, wire_dtype=wire) as client:
        got = client.infer(x, outputs=KEYS)
    assert list(got) == KEYS
    for key in KEYS:
        name, reduction = parse_key(key)
        want = reduce(reduction, full[name])  # the client's own reduction of the full in-process feature
        assert got[key].shape == want.shape and got[key].dtype == torch.float32, key
        assert torch.allclose(got[key], want, rtol=1e-5, atol=1e-5), key
    # and the full features over the wire equal the in-process ones
    for name in ("logits", "stage1", "stage3", "pool"):
        assert torch.allclose(got[name], full[name], rtol=1e-5, atol=1e-5), name


@pytest.mark.parametrize("out_dtype,tol", [(pb.FLOAT16, 2e-3), (pb.BFLOAT16, 1e-2)])
def test_reduced_outputs_in_a_narrow_wire_dtype(grpc_teacher, random_teacher, out_dtype, tol):
    url, _ = grpc_teacher
    x = _images(4, seed=1)
    full, _ = random_teacher.forward(x, ["stage2"])
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        reply = pb_grpc.TeacherStub(channel).Infer(pb.InferRequest(
            images=codec.encode(x, "float32"), outputs=["stage2.attention", "stage2.pool"], output_dtype=out_dtype))
    for key, fn in (("stage2.attention", attention), ("stage2.pool", pool)):
        t = reply.outputs[key]
        assert t.dtype == out_dtype and list(t.shape) == [4, *reduced_shape(parse_key(key)[1], FULL["stage2"])]
        got = codec.decode(t).float()
        assert torch.allclose(got, fn(full["stage2"]), rtol=tol, atol=tol), key


def test_describe_publishes_every_output_shape_and_the_reductions(grpc_teacher, random_teacher):
    url, servicer = grpc_teacher
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        d = pb_grpc.TeacherStub(channel).Describe(pb.DescribeRequest())
    described = {o.name: tuple(o.shape) for o in d.outputs}
    real, _ = random_teacher.forward(_images(2), list(FULL))  # a real forward, not the cached probe
    assert described == {name: tuple(t.shape[1:]) for name, t in real.items()} == FULL
    assert list(d.reductions) == ["none", "attention", "pool", "topK"]
    assert list(d.feature_names) == [n for n in FULL if n != "logits"]  # old field, unchanged
    # the limit covers a reply holding every key at the max batch, float32
    every_key = sum(torch.Size(s).numel() for s in offered_keys(FULL).values()) * 4 * 64
    assert d.max_message_bytes >= every_key
    with connect(url) as client:
        info = client.describe()
    assert info.output_shapes == FULL and info.reductions == ["none", "attention", "pool", "topK"]


def test_the_server_answers_a_request_for_every_key_at_max_batch(grpc_teacher, random_teacher):
    url, _ = grpc_teacher
    keys = list(random_teacher.output_keys)
    with connect(url) as client:
        got = client.infer(_images(64, seed=3), outputs=keys)
    assert {k: tuple(t.shape) for k, t in got.items()} == {k: (64, *s) for k, s in offered_keys(FULL).items()}


def test_client_and_server_count_the_same_bytes_and_reductions_cost_less(grpc_teacher):
    url, _ = grpc_teacher
    received = {}
    with connect(url) as client:
        for keys in (["stage1"], ["stage1.attention"], ["stage1.pool"]):
            before_stats, before = client.server_stats(), client.counters.bytes_received
            sent_before = client.counters.bytes_sent
            client.infer(_images(8), outputs=keys)
            after_stats = client.server_stats()
            received[keys[0]] = client.counters.bytes_received - before
            assert after_stats.bytes_out - before_stats.bytes_out == received[keys[0]]
            assert after_stats.bytes_in - before_stats.bytes_in == client.counters.bytes_sent - sent_before
    # float32 payload plus under 100 bytes of framing (key, shape, dtype, request id)
    for key, values in (("stage1", 8 * 16 * 32 * 32), ("stage1.attention", 8 * 32 * 32), ("stage1.pool", 8 * 16)):
        assert values * 4 < received[key] < values * 4 + 100, key


def test_client_info_of_a_local_teacher(tmp_path):
    from common.checkpoint import make_checkpoint, save_checkpoint
    from common.models import build_model

    path = tmp_path / "best.pt"
    save_checkpoint(make_checkpoint(build_model("resnet8", num_classes=10, in_channels=1), arch="resnet8",
                                    num_classes=10, input_shape=(1, 28, 28)), path)
    with connect(f"local:{path}") as client:
        info = client.describe()
        x = torch.randn(2, 1, 28, 28)
        got = client.infer(x, outputs=["stage2.attention", "logits", "logits.top3"])
    assert info.output_shapes == {"logits": (10,), "stem": (16, 28, 28), "stage1": (16, 28, 28),
                                  "stage2": (32, 14, 14), "stage3": (64, 7, 7), "pool": (64,)}
    assert info.reductions == ["none", "attention", "pool", "topK"]
    assert got["stage2.attention"].shape == (2, 14, 14)
    top = got["logits.top3"]    # a top-k answer in process: the same dense rebuild the wire gives
    assert torch.equal(top, reductions.reduce("top3", got["logits"]))
    assert torch.equal(top.topk(3).indices, got["logits"].topk(3).indices)


@pytest.mark.parametrize("outputs,fragments", [
    (["nope.pool"], ["unknown output 'nope'", "outputs are ['logits', 'stem', 'stage1', 'stage2', 'stage3', 'pool']"]),
    (["stage3.max"], ["unknown reduction 'max'", "['attention', 'pool']"]),
    (["stage3.none"], ["write NAME for the full output"]),
    (["logits", "pool.attention"], ["attention applies to a (C, H, W) map per image, and pool is (64,)"]),
    (["stage3.pool", "stage3.pool"], ["distinct keys"]),
    (["stage3." + "x" * 200], ["at most 128 characters"]),
])
def test_bad_keys_get_invalid_argument_and_the_server_keeps_serving(grpc_teacher, random_teacher, outputs,
                                                                      fragments):
    url, servicer = grpc_teacher
    failed = servicer.counters.snapshot()["failed_requests"]
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        stub = pb_grpc.TeacherStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Infer(pb.InferRequest(images=codec.encode(_images(2), "float32"), outputs=outputs))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for fragment in fragments:
            assert fragment in err.value.details()
        assert len(err.value.details()) < 400
        ok = stub.Infer(pb.InferRequest(images=codec.encode(_images(2), "float32"), outputs=["stage3.attention"]))
    want, _ = random_teacher.forward(_images(2), ["stage3.attention"])
    assert torch.allclose(codec.decode(ok.outputs["stage3.attention"]), want["stage3.attention"], atol=1e-5)
    assert servicer.counters.snapshot()["failed_requests"] == failed + 1


def test_top_k_answers_travel_compact_and_decode_to_the_dense_rebuild(grpc_teacher, random_teacher):
    """``logits.topK`` over the real server: 4K + 2 bytes a row on the wire (TOPK), decoded to the same
    dense logits the in-process reduction gives; a bad K or a top-k of a feature is INVALID_ARGUMENT."""
    url, _ = grpc_teacher
    x = _images(8, seed=5)
    dense, _ = random_teacher.forward(x, ["logits"])
    stub_target = url.removeprefix("grpc://")
    with grpc.insecure_channel(stub_target) as channel:
        stub = pb_grpc.TeacherStub(channel)
        request = pb.InferRequest(images=codec.encode(x, "float32"), outputs=["logits.top3", "stage3.pool"])
        reply = stub.Infer(request)
        t = reply.outputs["logits.top3"]
        assert t.dtype == pb.TOPK and t.topk == 3 and list(t.shape) == [8, 10] and len(t.data) == 8 * (4 * 3 + 2)
        assert torch.equal(codec.decode(t), reductions.reduce("top3", dense["logits"]))
        assert reply.outputs["stage3.pool"].dtype == pb.FLOAT32          # features stay dense
        for bad, says in [("logits.top11", "more than the teacher's 10 classes"),
                          ("stage3.pool.top2", "unknown reduction"), ("pool.top2", "logits only"),
                          ("logits.top0", "unknown reduction")]:
            with pytest.raises(grpc.RpcError) as e:
                stub.Infer(pb.InferRequest(images=codec.encode(x, "float32"), outputs=[bad]))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in e.value.details(), bad
        assert stub.Infer(request).outputs["logits.top3"].data == t.data           # still serving
    with connect(url) as client:
        got = client.infer(x, outputs=["logits", "logits.top10", "logits.top1"])   # (float16 images)
    assert torch.equal(got["logits.top10"], got["logits"].half().float())      # K = C: the logits in float16
    assert torch.equal(got["logits.top1"].argmax(1), got["logits"].argmax(1))


def test_a_damaged_top_k_reply_is_a_codec_error():
    x = torch.randn(3, 10)
    good = codec.encode_output("logits.top2", x)
    assert torch.equal(codec.decode(good), reductions.reduce("top2", x))
    bad_index = pb.Tensor(dtype=pb.TOPK, shape=[3, 10], topk=2, data=b"\x0b\x00" + good.data[2:])
    short = pb.Tensor(dtype=pb.TOPK, shape=[3, 10], topk=2, data=good.data[:-1])
    wrong_k = pb.Tensor(dtype=pb.TOPK, shape=[3, 10], topk=11, data=good.data)
    for msg, says in [(bad_index, "outside [0, 10)"), (short, "bytes"), (wrong_k, "k=11")]:
        with pytest.raises(codec.CodecError, match=re.escape(says)):
            codec.decode(msg)
