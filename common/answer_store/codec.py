"""One stored teacher answer <-> bytes, with no pickle anywhere.

A store may be shared by several runs and hosts, or copied from elsewhere, so
what is read from it is data and nothing more: a JSON header and raw
little-endian tensor buffers, every field checked before a byte is trusted.

Two layouts; ``encode`` picks one, ``decode`` tells them apart by the first byte.

KDA1, for any entry (all integers little-endian)::

    b"KDA1"                  magic; its last byte is the format version
    uint32 H                 length of the JSON header
    H bytes                  {"header": {...}, "tensors": [{"key", "dtype", "shape", "offset", "length"}, ...]}
    tensor bytes             each tensor's raw buffer, in header order, back to back
    uint32 crc32             zlib.crc32 of everything before it

Compact view v1, for the commonest replayed entry: header exactly
``{"recipe", "run", "step"}`` with an unmixed view's recipe (``common.views.Views.as_array``:
partner sample -1, the other partner fields and the mix bits 0), and tensors exactly
``common.topk.to_tensors("logits", ...)``. 4K + 24 bytes: 64 at K = 10, where KDA1
takes about 395 for the same entry. All little-endian::

    uint8  tag | flip        0xB0 | flip (flip 0 or 1); never b"K", KDA1's first byte
    int16  top, left         the crop box's corner; negative only by a data set's zero padding
    uint16 height, width     the box's size, > 0 (images up to 65,535 pixels a side)
    uint32 sample            the image; also in the store key, kept so that an entry under the wrong key
                             is noticed; 32 bits (ImageNet-22k's 14.2M images need 24)
    uint32 run               the writing run's tag, used only to tell a resumed run's own later writes apart;
                             32 bits: two runs (random tags) sharing a store collide with odds 2**-32
    uint24 step              the step that stored it: 16.7M steps (ImageNet-1k at batch 64 for 300 epochs
                             is 6M; replay stores views in the first epochs)
    int16[K] indices         the top-K classes, each in [0, 32767), none twice
    float16[K] values        their logits, finite
    float16 rest             the other classes' log-mean-exp, finite
    uint16 check             CRC-16/CCITT (binascii.crc_hqx, initial 0xFFFF) of everything before it: every
                             burst of up to 16 flipped bits is caught (more than crc32's low 16 bits promise)

A value that does not fit its field (a run id over 32 bits, say) makes ``encode`` use KDA1: the compact
layout only saves bytes, and every entry KDA1 can hold still encodes.
"""
from __future__ import annotations

import binascii
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
    "int16": np.dtype("<i2"),
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


# ---------------------------------------------------------------- the compact view layout (see the docstring)

_COMPACT_TAG = 0xB0                   # | flip; the first byte of a compact entry
_COMPACT_HEAD = struct.Struct("<BhhHHII")   # tag|flip, top, left, height, width, sample, run (then uint24 step)
_COMPACT_FIXED = _COMPACT_HEAD.size + 3 + 2 + 2   # + step + rest + check: 24, and 4 bytes per top-K class
_COMPACT_CHECK = struct.Struct("<H")
_COMPACT_KEYS = ("logits.topk.indices", "logits.topk.values", "logits.topk.rest")
_RECIPE_COLUMNS = 13                  # common.views.Views.COLUMNS: a view, its partner, the mix bits
_MAX_K = 32767                        # common.topk.MAX_CLASSES


class _NotCompact(ValueError):
    """The entry is not one the compact layout holds (then KDA1 does)."""


def _fits(value, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value < high:
        raise _NotCompact(f"{what} {value!r} is not an int in [{low}, {high})")
    return value


def _encode_compact(entry: Entry) -> bytes:
    """The compact layout of ``entry``; _NotCompact for an entry it cannot hold exactly."""
    import torch

    from common.topk import problem

    header, tensors = entry.header, entry.tensors
    if not isinstance(header, dict) or set(header) != {"recipe", "run", "step"}:
        raise _NotCompact("header is not exactly recipe, run, step")
    recipe = header["recipe"]
    if not isinstance(recipe, list) or len(recipe) != _RECIPE_COLUMNS:
        raise _NotCompact(f"recipe is not a list of {_RECIPE_COLUMNS}")
    sample, top, left, height, width, flip = (
        _fits(recipe[0], 0, 2**32, "sample"), _fits(recipe[1], -2**15, 2**15, "top"),
        _fits(recipe[2], -2**15, 2**15, "left"), _fits(recipe[3], 1, 2**16, "height"),
        _fits(recipe[4], 1, 2**16, "width"), _fits(recipe[5], 0, 2, "flip"))
    partner = recipe[6:]   # Views.as_array of an unmixed row: partner sample -1, its box, flip and the mix 0
    if not all(type(v) is int for v in partner) or partner != [-1] + [0] * (_RECIPE_COLUMNS - 7):
        raise _NotCompact("the view is mixed")
    run, step = _fits(header["run"], 0, 2**32, "run"), _fits(header["step"], 0, 2**24, "step")
    if not isinstance(tensors, dict) or set(tensors) != set(_COMPACT_KEYS):
        raise _NotCompact(f"tensors are not exactly {_COMPACT_KEYS}")
    i, v, r = (tensors[key] for key in _COMPACT_KEYS)
    if not all(isinstance(t, torch.Tensor) and t.layout == torch.strided for t in (i, v, r)):
        raise _NotCompact("a tensor is not a dense torch.Tensor")
    if (i.dtype, v.dtype, r.dtype) != (torch.int16, torch.float16, torch.float16):
        raise _NotCompact("dtypes are not int16, float16, float16")
    if i.dim() != 1 or v.shape != i.shape or tuple(r.shape) != (1,) or not 1 <= i.shape[0] <= _MAX_K:
        raise _NotCompact("shapes are not [K], [K], [1]")
    i, v, r = (t.detach().to("cpu").contiguous().numpy() for t in (i, v, r))
    wrong = problem(i.reshape(1, -1), v.reshape(1, -1), r, _MAX_K)
    if wrong is not None:
        raise _NotCompact(wrong)
    body = b"".join([_COMPACT_HEAD.pack(_COMPACT_TAG | flip, top, left, height, width, sample, run),
                     step.to_bytes(3, "little"), i.astype("<i2").tobytes(), v.astype("<f2").tobytes(),
                     r.astype("<f2").tobytes()])
    return body + _COMPACT_CHECK.pack(binascii.crc_hqx(body, 0xFFFF))


def _decode_compact(data: memoryview) -> Entry:
    import torch

    from common.topk import problem

    size = len(data)
    k, extra = divmod(size - _COMPACT_FIXED, 4)
    if extra or not 1 <= k <= _MAX_K:
        raise DamagedEntry(f"compact entry of {size} bytes: not 24 + 4K bytes for a K in [1, {_MAX_K}]")
    (check,) = _COMPACT_CHECK.unpack_from(data, size - _COMPACT_CHECK.size)
    if binascii.crc_hqx(data[:-_COMPACT_CHECK.size], 0xFFFF) != check:
        raise DamagedEntry("compact entry: checksum mismatch")
    tag, top, left, height, width, sample, run = _COMPACT_HEAD.unpack_from(data)
    if tag & ~1 != _COMPACT_TAG:
        raise DamagedEntry(f"compact entry: bad tag 0x{tag:02x}")
    if not height or not width:
        raise DamagedEntry(f"compact entry: crop box {height} x {width} is empty")
    step = int.from_bytes(data[_COMPACT_HEAD.size:_COMPACT_HEAD.size + 3], "little")
    start = _COMPACT_HEAD.size + 3
    i = np.frombuffer(data, dtype="<i2", count=k, offset=start)
    v = np.frombuffer(data, dtype="<f2", count=k, offset=start + 2 * k)
    r = np.frombuffer(data, dtype="<f2", count=1, offset=start + 4 * k)
    wrong = problem(i.reshape(1, -1), v.reshape(1, -1), r, _MAX_K)
    if wrong is not None:
        raise DamagedEntry(f"compact entry: top-k answer {wrong}")
    recipe = [sample, top, left, height, width, tag & 1, -1, 0, 0, 0, 0, 0, 0]
    tensors = {key: torch.from_numpy(a.astype(a.dtype.newbyteorder("="), copy=True))   # copies: own their memory
               for key, a in zip(_COMPACT_KEYS, (i, v, r))}
    return Entry(header={"recipe": recipe, "run": run, "step": step}, tensors=tensors)


def encode(entry: Entry) -> bytes:
    """The stored bytes of ``entry``: the compact layout where it holds the entry exactly, else KDA1;
    ValueError for a header or tensor neither can hold."""
    import torch

    try:
        return _encode_compact(entry)
    except _NotCompact:
        pass
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
    if len(data) and data[0] & ~1 == _COMPACT_TAG:
        return _decode_compact(data)
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
