"""Tensors <-> the wire's raw little-endian buffers.

One buffer plus dtype and shape per tensor: encoding is a memory copy, and the
bytes on the wire are exactly ``numel * itemsize``. ``uint8`` is a per-tensor
affine quantisation (``value = q * scale + offset``), so normalised or mixed
images can still travel at one byte per value. A top-k key's answer (``logits.top10``)
travels as ``TOPK``: its K largest values and the rest (``common.topk``), 4K + 2 bytes a row,
and is decoded back to the dense tensor it stands for.
"""
from __future__ import annotations

import numpy as np
import torch

from common import reductions
from protos import teacher_pb2 as pb

WIRE_DTYPES: dict[str, int] = {
    "float32": pb.FLOAT32,
    "float16": pb.FLOAT16,
    "bfloat16": pb.BFLOAT16,
    "uint8": pb.UINT8,
}
_TORCH = {pb.FLOAT32: torch.float32, pb.FLOAT16: torch.float16,
          pb.BFLOAT16: torch.bfloat16, pb.UINT8: torch.uint8}
# Little-endian numpy views of each payload; numpy has no bfloat16, so its
# 2-byte payload travels through an int16 view.
_NUMPY = {pb.FLOAT32: np.dtype("<f4"), pb.FLOAT16: np.dtype("<f2"),
          pb.BFLOAT16: np.dtype("<i2"), pb.UINT8: np.dtype("u1")}
ITEMSIZE = {code: dt.itemsize for code, dt in _NUMPY.items()}


class CodecError(ValueError):
    """A tensor message that cannot be decoded; the message says why."""


def dtype_code(name: str) -> int:
    try:
        return WIRE_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown wire dtype {name!r}; choose one of {sorted(WIRE_DTYPES)}") from None


def dtype_name(code: int) -> str:
    for name, c in WIRE_DTYPES.items():
        if c == code:
            return name
    return f"<unknown dtype {code}>"


def encode(t: torch.Tensor, dtype: str | int = "float32") -> pb.Tensor:
    """Encode a tensor for the wire in ``dtype`` (a name or a DType code)."""
    code = dtype_code(dtype) if isinstance(dtype, str) else dtype
    t = t.detach()
    scale, offset = 1.0, 0.0
    if code == pb.UINT8 and t.dtype != torch.uint8:
        t = t.float()
        lo, hi = (t.min().item(), t.max().item()) if t.numel() else (0.0, 0.0)
        scale = (hi - lo) / 255.0 or 1.0
        offset = lo
        t = ((t - offset) / scale).round_().clamp_(0, 255).to(torch.uint8)
    else:
        t = t.to(_TORCH[code])
    t = t.contiguous().cpu()
    raw = t.view(torch.int16) if code == pb.BFLOAT16 else t
    data = raw.numpy().astype(_NUMPY[code], copy=False).tobytes()
    return pb.Tensor(dtype=code, shape=list(t.shape), data=data, scale=scale, offset=offset)


def encode_output(key: str, t: torch.Tensor, dtype: str | int = "float32") -> pb.Tensor:
    """A reply's tensor for ``key``: a top-k key's as TOPK, any other in ``dtype``."""
    k = reductions.top_k(reductions.parse_key(key)[1])
    if k is None:
        return encode(t, dtype)
    from common.topk import TopK

    top = TopK.from_logits(t.detach().cpu(), k)
    return pb.Tensor(dtype=pb.TOPK, shape=[top.n, top.classes], data=top.to_bytes(), topk=k)


def expected_nbytes(msg: pb.Tensor) -> int:
    return int(np.prod(msg.shape, dtype=np.int64)) * ITEMSIZE[msg.dtype]


def decode(msg: pb.Tensor, *, dequantize: bool = True) -> torch.Tensor:
    """Decode a wire tensor; uint8 comes back as float32 unless ``dequantize`` is False, and a top-k
    answer as the dense float32 tensor it stands for."""
    if msg.dtype == pb.TOPK:
        return _decode_top_k(msg)
    if msg.dtype not in _TORCH:
        raise CodecError(f"unknown dtype code {msg.dtype}; expected one of {sorted(WIRE_DTYPES)}")
    if any(d < 0 for d in msg.shape):
        raise CodecError(f"negative dimension in shape {list(msg.shape)}")
    want = expected_nbytes(msg)
    if len(msg.data) != want:
        raise CodecError(f"{dtype_name(msg.dtype)} tensor of shape {list(msg.shape)} needs "
                         f"{want} bytes, got {len(msg.data)}")
    arr = np.frombuffer(msg.data, dtype=_NUMPY[msg.dtype]).reshape(tuple(msg.shape))
    t = torch.from_numpy(arr.astype(_NUMPY[msg.dtype].newbyteorder("="), copy=True))
    if msg.dtype == pb.BFLOAT16:
        t = t.view(torch.bfloat16)
    if msg.dtype == pb.UINT8 and dequantize and (msg.scale, msg.offset) != (0.0, 0.0):
        t = t.float() * msg.scale + msg.offset
    return t


def _decode_top_k(msg: pb.Tensor) -> torch.Tensor:
    from common.topk import TopK

    if len(msg.shape) != 2 or any(d < 0 for d in msg.shape):
        raise CodecError(f"a top-k answer has shape [N, C], got {list(msg.shape)}")
    try:
        return TopK.from_bytes(msg.data, int(msg.shape[0]), int(msg.topk), int(msg.shape[1])).dense()
    except ValueError as e:
        raise CodecError(str(e)) from None
