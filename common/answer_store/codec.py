"""One stored teacher answer <-> bytes, with no pickle anywhere.

A store may be shared by several runs and hosts, or copied from elsewhere, so
what is read from it is data and nothing more: a JSON header and raw
little-endian tensor buffers, every field checked before a byte is trusted.

Layout (all integers little-endian)::

    b"KDA1"                  magic; its last byte is the format version
    uint32 H                 length of the JSON header
    H bytes                  {"header": {...}, "tensors": [{"key", "dtype", "shape", "offset", "length"}, ...]}
    tensor bytes             each tensor's raw buffer, in header order, back to back
    uint32 crc32             zlib.crc32 of everything before it
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported where a tensor is made or read: moving raw bytes (a store's
# own work, a process that only copies entries) then does not pay for loading it.

MAGIC = b"KDA"
VERSION = b"1"
_PREFIX = struct.Struct("<4sI")
_CRC = struct.Struct("<I")
_MAX_NDIM = 32

# The allow-list: dtype name (as torch spells it) -> little-endian numpy view of its bytes.
# numpy has no bfloat16, so its 2-byte payload goes through an int16 view; bool through uint8.
_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<i2"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("u1"),
}
_VIEW_AS = {"bfloat16": "int16", "bool": "uint8"}  # what numpy can hold for these


class DamagedEntry(ValueError):
    """Bytes that are not a valid stored entry; the message says what is wrong."""


@dataclass
class Entry:
    """One stored answer: a JSON-able ``header`` and named CPU tensors."""

    header: dict = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def _check_json(value, where: str) -> None:
    """Only str/int/float/bool/list/dict (str keys): what survives JSON unchanged."""
    if isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not finite; JSON has no such number")
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is not a str")
            _check_json(v, f"{where}[{k!r}]")
        return
    raise ValueError(f"{where}: {type(value).__name__} is not one of str, int, float, bool, list, dict")


def encode(entry: Entry) -> bytes:
    """The stored bytes of ``entry``; ValueError for a header or tensor the format cannot hold."""
    import torch

    if not isinstance(entry.header, dict):
        raise ValueError(f"header must be a dict, got {type(entry.header).__name__}")
    _check_json(entry.header, "header")
    specs, buffers, offset = [], [], 0
    for key, t in entry.tensors.items():
        if not isinstance(key, str):
            raise ValueError(f"tensor key {key!r} is not a str")
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            raise ValueError(f"tensor {key!r} is not a dense torch.Tensor")
        name = str(t.dtype).removeprefix("torch.")
        if name not in _DTYPES:
            raise ValueError(f"tensor {key!r} has dtype {t.dtype}; storable: {sorted(_DTYPES)}")
        t = t.detach().to("cpu").contiguous()
        arr = t.view(getattr(torch, _VIEW_AS.get(name, name))).numpy()
        raw = arr.astype(_DTYPES[name], copy=False).tobytes()
        specs.append({"key": key, "dtype": name, "shape": list(t.shape), "offset": offset, "length": len(raw)})
        buffers.append(raw)
        offset += len(raw)
    head = json.dumps({"header": entry.header, "tensors": specs}, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")
    body = b"".join([_PREFIX.pack(MAGIC + VERSION, len(head)), head, *buffers])
    return body + _CRC.pack(zlib.crc32(body))


def _nonneg_int(value, what: str) -> int:
    if type(value) is not int or value < 0:
        raise DamagedEntry(f"{what} is {value!r}, not a non-negative int")
    return value


def _no_constants(name: str):
    raise DamagedEntry(f"header holds {name}, which is not JSON")


def _unique_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise DamagedEntry(f"header repeats the key {k!r}")
        out[k] = v
    return out


def _parse_header(raw: bytes) -> tuple[dict, list]:
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constants, object_pairs_hook=_unique_keys)
    except DamagedEntry:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise DamagedEntry(f"header is not JSON: {type(e).__name__}") from None
    if not isinstance(doc, dict) or set(doc) != {"header", "tensors"}:
        raise DamagedEntry("header is not an object with exactly 'header' and 'tensors'")
    header, tensors = doc["header"], doc["tensors"]
    if not isinstance(header, dict) or not isinstance(tensors, list):
        raise DamagedEntry("'header' is not an object or 'tensors' is not a list")
    try:
        _check_json(header, "header")
    except ValueError as e:
        raise DamagedEntry(str(e)) from None
    return header, tensors


def decode(data: bytes) -> Entry:
    """The entry in ``data``; DamagedEntry for anything at all that is wrong with it.

    The returned tensors own their memory (copied out of ``data``).
    """
    import torch

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DamagedEntry(f"expected bytes, got {type(data).__name__}")
    data = memoryview(data).cast("B")
    if len(data) < _PREFIX.size + _CRC.size:
        raise DamagedEntry(f"{len(data)} bytes is too short for an entry")
    magic, head_len = _PREFIX.unpack_from(data)
    if magic[:3] != MAGIC:
        raise DamagedEntry(f"bad magic {bytes(magic)!r}")
    if magic[3:] != VERSION:
        raise DamagedEntry(f"unknown format version {bytes(magic[3:])!r}")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[:-_CRC.size]) != crc:
        raise DamagedEntry("checksum mismatch")
    start = _PREFIX.size + head_len
    end = len(data) - _CRC.size
    if start > end:
        raise DamagedEntry(f"header length {head_len} runs past the end")
    header, specs = _parse_header(bytes(data[_PREFIX.size:start]))
    payload = data[start:end]
    tensors: dict[str, torch.Tensor] = {}
    offset = 0
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or set(spec) != {"key", "dtype", "shape", "offset", "length"}:
            raise DamagedEntry(f"tensor #{i} is not an object with key, dtype, shape, offset, length")
        key, dtype, shape = spec["key"], spec["dtype"], spec["shape"]
        if not isinstance(key, str) or key in tensors:
            raise DamagedEntry(f"tensor #{i} has a bad or repeated key {key!r}")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise DamagedEntry(f"tensor {key!r} has dtype {dtype!r}, not one of {sorted(_DTYPES)}")
        if not isinstance(shape, list) or len(shape) > _MAX_NDIM:
            raise DamagedEntry(f"tensor {key!r} has a bad shape")
        dims = [_nonneg_int(d, f"tensor {key!r} dimension") for d in shape]
        if _nonneg_int(spec["offset"], f"tensor {key!r} offset") != offset:
            raise DamagedEntry(f"tensor {key!r} starts at {spec['offset']}, expected {offset}")
        length = _nonneg_int(spec["length"], f"tensor {key!r} length")
        view = _DTYPES[dtype]
        if math.prod(dims) * view.itemsize != length:
            raise DamagedEntry(f"tensor {key!r}: shape {dims} of {dtype} does not take {length} bytes")
        if offset + length > len(payload):
            raise DamagedEntry(f"tensor {key!r} runs past the end of the data")
        arr = np.frombuffer(payload, dtype=view, count=math.prod(dims), offset=offset)
        arr = arr.astype(view.newbyteorder("="), copy=True).reshape(dims)  # a copy: owns its memory
        if dtype == "bool" and arr.size and arr.max() > 1:
            raise DamagedEntry(f"tensor {key!r}: bool bytes other than 0 and 1")
        tensors[key] = torch.from_numpy(arr).view(getattr(torch, dtype))
        offset += length
    if offset != len(payload):
        raise DamagedEntry(f"{len(payload) - offset} bytes after the last tensor")
    return Entry(header=header, tensors=tensors)
