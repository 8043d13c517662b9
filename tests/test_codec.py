"""The wire codec: exact round trips, sizes, and refusal of malformed tensors."""
import pytest
import torch

from common import codec
from protos import teacher_pb2 as pb


@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("float16", 2e-3), ("bfloat16", 1.6e-2), ("uint8", None)])
def test_round_trip(dtype, tol):
    x = torch.randn(5, 3, 7, 6)
    msg = codec.encode(x, dtype)
    assert len(msg.data) == x.numel() * codec.ITEMSIZE[codec.dtype_code(dtype)]
    y = codec.decode(msg).float()
    assert y.shape == x.shape
    if tol is None:  # affine uint8: error at most half a quantisation step
        tol = (x.max() - x.min()).item() / 255 / 2 + 1e-6
    assert (y - x).abs().max().item() <= tol * max(1.0, x.abs().max().item())


def test_float32_is_bit_exact_and_little_endian():
    x = torch.tensor([1.0, -2.5, 3.25])
    msg = codec.encode(x, "float32")
    assert msg.data == bytes.fromhex("0000803f000020c000005040")
    assert torch.equal(codec.decode(msg), x)


def test_raw_uint8_survives_unchanged():
    x = torch.arange(256, dtype=torch.uint8).reshape(16, 16)
    msg = codec.encode(x, "uint8")
    assert torch.equal(codec.decode(msg, dequantize=False), x)
    assert torch.equal(codec.decode(msg), x.float())


def test_constant_tensor_quantises_exactly():
    x = torch.full((2, 3), -0.75)
    assert torch.equal(codec.decode(codec.encode(x, "uint8")), x)


def test_wrong_byte_count_is_refused():
    msg = codec.encode(torch.zeros(2, 3), "float16")
    msg.data = msg.data[:-1]
    with pytest.raises(codec.CodecError, match="needs 12 bytes, got 11"):
        codec.decode(msg)


def test_unknown_dtype_is_refused():
    with pytest.raises(codec.CodecError, match="unknown dtype"):
        codec.decode(pb.Tensor(dtype=99, shape=[1], data=b"\0"))
    with pytest.raises(ValueError, match="unknown wire dtype"):
        codec.encode(torch.zeros(1), "int4")


def test_negative_shape_is_refused():
    with pytest.raises(codec.CodecError, match="negative"):
        codec.decode(pb.Tensor(dtype=pb.FLOAT32, shape=[-1, 2], data=b""))
