"""A teacher's answer for many classes, kept compact: its top-K classes and one value for the rest.

A row of logits over C classes is kept as its K largest logits (int16 class
indices, largest first, and float16 logits) plus one float16 ``rest``, and rebuilt
(``dense``) as a logits vector in which every class outside the top-K gets
``rest``: TinyViT's stored top-k soft labels, 4K + 2 bytes an answer.

Logits, not probabilities, are kept, so one stored answer serves any KD
temperature and DKD's target / non-target split: the student's loss applies
its own softmax (at its own T) to the rebuilt logits. ``rest`` is the log-mean-exp
of the C - K logits outside the top-K, ``logsumexp(tail) - log(C - K)``, so the
rebuilt softmax at T = 1 keeps the tail's total mass exactly and spreads it
evenly over the tail's classes (TinyViT's rule, in logit space). When K == C
there is no tail: ``rest`` is 0 and unused, and ``dense`` gives the logits
rounded to float16.

Mathematically ``rest <= min(top-K)`` (a mean of values no larger than the top-K's
smallest), and rounding to float16 keeps it so. ``from_logits(t.dense(), k)``
rebuilds the same bits as ``t``: the tail's log-mean-exp is computed in float64
as ``max + log(sum(exp(x - max)) / n)``, which gives back exactly the value of a
tail whose values are all equal.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MAX_CLASSES = 32767          # an int16 index names a class
_LOGSUMEXP_BLOCK = 1 << 22   # float64 elements per block of rows when computing the tail's log-mean-exp
_I2, _F2 = np.dtype("<i2"), np.dtype("<f2")


def bytes_per_answer(k: int) -> int:
    """Bytes of one row in ``TopK.to_bytes``: K int16 indices, K float16 logits, one float16 rest."""
    return 4 * k + 2


def problem(indices: np.ndarray, values: np.ndarray, rest: np.ndarray, classes: int) -> str | None:
    """What is wrong with these rows (int [N, K], float [N, K], float [N]), in one line; None if nothing.
    Vectorised: N can be thousands."""
    bad = (indices < 0) | (indices >= classes)
    if bad.any():
        row = int(np.nonzero(bad.any(axis=1))[0][0])
        index = int(indices[row][bad[row]][0])
        return f"row {row} has class index {index}, outside [0, {classes})"
    if indices.shape[1] > 1:
        ordered = np.sort(indices, axis=1)
        repeated = ordered[:, 1:] == ordered[:, :-1]
        if repeated.any():
            row = int(np.nonzero(repeated.any(axis=1))[0][0])
            return f"row {row} repeats class index {int(ordered[row, 1:][repeated[row]][0])}"
    finite = np.isfinite(values)
    if not finite.all():
        row = int(np.nonzero(~finite.all(axis=1))[0][0])
        return f"row {row} has a logit that is not finite ({float(values[row][~finite[row]][0])})"
    finite = np.isfinite(rest)
    if not finite.all():
        row = int(np.nonzero(~finite)[0][0])
        return f"row {row} has a rest value that is not finite ({float(rest[row])})"
    return None


@dataclass(frozen=True, eq=False)   # eq=False: tensors have no single truth value; compare dense() or fields
class TopK:
    """N answers over ``classes`` classes, each its top-K logits and the rest's log-mean-exp."""

    indices: torch.Tensor   # int16 [N, K], each row's classes by logit, largest first
    values: torch.Tensor    # float16 [N, K], the logits at those classes
    rest: torch.Tensor      # float16 [N], the tail's log-mean-exp (0 when K == C)
    classes: int            # C

    def __post_init__(self):
        i, v, r = self.indices, self.values, self.rest
        if not (isinstance(i, torch.Tensor) and isinstance(v, torch.Tensor) and isinstance(r, torch.Tensor)):
            raise ValueError("top-k answer: indices, values and rest must be tensors")
        if i.dtype != torch.int16 or v.dtype != torch.float16 or r.dtype != torch.float16:
            raise ValueError(f"top-k answer: dtypes {i.dtype}, {v.dtype}, {r.dtype}; expected int16, float16, "
                             "float16")
        if i.dim() != 2 or v.shape != i.shape or r.shape != i.shape[:1]:
            raise ValueError(f"top-k answer: shapes {list(i.shape)}, {list(v.shape)}, {list(r.shape)}; expected "
                             "[N, K], [N, K], [N]")
        _check_sizes(i.shape[1], self.classes)

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    @property
    def n(self) -> int:
        return self.indices.shape[0]

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int) -> "TopK":
        """The top-``k`` answers of ``logits`` (float [N, C]), computed in float32 on the logits' device (the
        tail's log-mean-exp in float64); the answer's tensors are on the CPU. ValueError (one line) for
        k <= 0, k > C, C > 32767, input not 2-D, non-finite logits or logits beyond float16's range."""
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"top-k answer: logits must be a 2-D tensor [N, C], got {shape}")
        if not logits.dtype.is_floating_point:
            raise ValueError(f"top-k answer: logits must be floating point, got {logits.dtype}")
        n, classes = logits.shape
        _check_sizes(k, classes)
        x = logits.detach().to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            row = int((~torch.isfinite(x)).any(dim=1).nonzero()[0, 0])
            raise ValueError(f"top-k answer: row {row} of the logits is not finite")
        top, idx = torch.topk(x, k, dim=1, largest=True, sorted=True)
        values = top.to(torch.float16)
        if not bool(torch.isfinite(values).all()):
            raise ValueError("top-k answer: a logit is beyond float16's range (about +-65504)")
        if k == classes:
            rest = torch.zeros(n, dtype=torch.float16, device=x.device)
        else:
            rest = _tail_log_mean_exp(x, idx, classes - k).to(torch.float16)
            if not bool(torch.isfinite(rest).all()):
                raise ValueError("top-k answer: the rest's log-mean-exp is beyond float16's range (about +-65504)")
        return cls(idx.to("cpu", torch.int16), values.cpu(), rest.cpu(), classes)

    def dense(self) -> torch.Tensor:
        """float32 [N, C]: the top-K logits at their classes, ``rest`` at every other class."""
        out = self.rest.float().unsqueeze(1).expand(self.n, self.classes).contiguous()
        return out.scatter_(1, self.indices.long(), self.values.float())

    def to_bytes(self) -> bytes:
        """Little-endian, columnar: indices int16 (N*K*2 bytes), values float16 (N*K*2), rest float16 (N*2)."""
        return b"".join([self.indices.contiguous().numpy().astype(_I2, copy=False).tobytes(),
                         self.values.contiguous().numpy().astype(_F2, copy=False).tobytes(),
                         self.rest.contiguous().numpy().astype(_F2, copy=False).tobytes()])

    @classmethod
    def from_bytes(cls, data: bytes, n: int, k: int, classes: int) -> "TopK":
        """``to_bytes``' inverse; ValueError (one line) for anything wrong with the bytes or the sizes."""
        if type(n) is not int or n < 0:
            raise ValueError(f"top-k answer: row count {n!r} is not a non-negative int")
        _check_sizes(k, classes)
        data = memoryview(data).cast("B")
        want = n * bytes_per_answer(k)
        if len(data) != want:
            raise ValueError(f"top-k answer: {len(data)} bytes, expected {want} for {n} rows of k={k} "
                             f"({bytes_per_answer(k)} bytes each)")
        nk = n * k
        indices = np.frombuffer(data, dtype=_I2, count=nk, offset=0).reshape(n, k)
        values = np.frombuffer(data, dtype=_F2, count=nk, offset=2 * nk).reshape(n, k)
        rest = np.frombuffer(data, dtype=_F2, count=n, offset=4 * nk)
        wrong = problem(indices, values, rest, classes)
        if wrong is not None:
            raise ValueError(f"top-k answer: {wrong}")
        return cls(torch.from_numpy(indices.astype(np.int16)), torch.from_numpy(values.astype(np.float16)),
                   torch.from_numpy(rest.astype(np.float16)), classes)   # astype copies: own their memory

    def take(self, rows) -> "TopK":
        """The answers at ``rows`` (an index tensor or list, or a bool mask)."""
        rows = torch.as_tensor(rows)
        if rows.numel() == 0 and rows.dtype != torch.bool:
            rows = rows.long()
        rows = rows.reshape(-1) if rows.dim() == 0 else rows
        return TopK(self.indices[rows], self.values[rows], self.rest[rows], self.classes)

    @staticmethod
    def cat(parts: list["TopK"]) -> "TopK":
        """The answers of ``parts`` (at least one, all of one K and C), one after the other."""
        if not parts:
            raise ValueError("top-k answer: nothing to concatenate")
        if len({(p.k, p.classes) for p in parts}) != 1:
            raise ValueError(f"top-k answer: cannot concatenate answers of different (k, classes): "
                             f"{sorted({(p.k, p.classes) for p in parts})}")
        return TopK(torch.cat([p.indices for p in parts]), torch.cat([p.values for p in parts]),
                    torch.cat([p.rest for p in parts]), parts[0].classes)


def _check_sizes(k, classes) -> None:
    if type(classes) is not int or not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"top-k answer: {classes!r} classes; an int16 index names at most {MAX_CLASSES}")
    if type(k) is not int or not 1 <= k <= classes:
        raise ValueError(f"top-k answer: k={k!r} is outside [1, {classes}] (the number of classes)")


def _tail_log_mean_exp(x: torch.Tensor, idx: torch.Tensor, tail: int) -> torch.Tensor:
    """float64 [N]: log-mean-exp of each row of ``x`` outside its ``idx`` columns (``tail`` of them), as
    ``max + log(sum(exp(x - max)) / tail)``: exactly ``v`` when every tail value is ``v`` (sum == tail, so the
    log is of exactly 1.0). In blocks of rows, so a large N x C needs no N x C float64 copy."""
    n, classes = x.shape
    out = torch.empty(n, dtype=torch.float64, device=x.device)
    step = max(1, _LOGSUMEXP_BLOCK // classes)
    for first in range(0, n, step):
        block = x[first:first + step].double()
        block.scatter_(1, idx[first:first + step], float("-inf"))
        m = block.max(dim=1, keepdim=True).values
        s = torch.exp(block - m).sum(dim=1)
        out[first:first + step] = m.squeeze(1) + torch.log(s / tail)
    return out


def to_tensors(key: str, t: TopK) -> dict[str, torch.Tensor]:
    """One image's answer (N must be 1) as an answer-store entry's tensors: ``{key}.topk.indices`` int16 [K],
    ``{key}.topk.values`` float16 [K], ``{key}.topk.rest`` float16 [1]."""
    if t.n != 1:
        raise ValueError(f"top-k answer: an entry holds one image's answer, got {t.n}")
    return {f"{key}.topk.indices": t.indices[0].clone(), f"{key}.topk.values": t.values[0].clone(),
            f"{key}.topk.rest": t.rest.clone()}


def from_many(key: str, many: list[dict], classes: int) -> tuple[TopK | None, list[bool]]:
    """``from_tensors`` for many entries at once, checked and rebuilt as one batch (a replayed step reads one
    entry an image): the answers of the entries that hold a well-formed one, in order, and which those are."""
    k, rows, ok = None, [], [False] * len(many)
    for n, tensors in enumerate(many):
        parts = [tensors.get(f"{key}.topk.{part}") if isinstance(tensors, dict) else None
                 for part in ("indices", "values", "rest")]
        if not all(isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type == "cpu"
                   for t in parts):
            continue
        i, v, r = parts
        if ((i.dtype, v.dtype, r.dtype) != (torch.int16, torch.float16, torch.float16) or i.dim() != 1
                or v.shape != i.shape or tuple(r.shape) != (1,) or i.shape[0] != (k or i.shape[0])):
            continue
        k = i.shape[0]
        rows.append((n, i, v, r))
    if not rows or type(classes) is not int or not 1 <= classes <= MAX_CLASSES or not 1 <= k <= classes:
        return None, [False] * len(many)
    indices = torch.stack([i for _, i, _, _ in rows])
    values = torch.stack([v for _, _, v, _ in rows])
    rest = torch.cat([r for _, _, _, r in rows])
    good = _rows_ok(indices.numpy(), values.numpy(), rest.numpy(), classes)
    keep = torch.from_numpy(good)
    for (n, *_), g in zip(rows, good.tolist()):
        ok[n] = g
    if not bool(keep.any()):
        return None, ok
    return TopK(indices[keep], values[keep], rest[keep], classes), ok


def _rows_ok(indices: np.ndarray, values: np.ndarray, rest: np.ndarray, classes: int) -> np.ndarray:
    """Per row: every index in [0, classes) and none repeated, every value and the rest finite."""
    good = ((indices >= 0) & (indices < classes)).all(axis=1) & np.isfinite(values).all(axis=1) & np.isfinite(rest)
    if indices.shape[1] > 1:
        ordered = np.sort(indices, axis=1)
        good &= ~(ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    return good


def from_tensors(key: str, tensors: dict, classes: int) -> TopK | None:
    """``to_tensors``' inverse for an answer over ``classes`` classes; None when the tensors are missing or
    malformed (dtypes, shapes, index range, repeated index, non-finite values). Never raises."""
    if not isinstance(tensors, dict) or type(classes) is not int or not 1 <= classes <= MAX_CLASSES:
        return None
    i, v, r = (tensors.get(f"{key}.topk.{part}") for part in ("indices", "values", "rest"))
    if not all(isinstance(t, torch.Tensor) and t.layout == torch.strided for t in (i, v, r)):
        return None
    if (i.dtype, v.dtype, r.dtype) != (torch.int16, torch.float16, torch.float16):
        return None
    if i.dim() != 1 or v.shape != i.shape or tuple(r.shape) != (1,) or not 1 <= i.shape[0] <= classes:
        return None
    try:
        i, v, r = (t.detach().to("cpu") for t in (i, v, r))
        arrays = i.numpy().reshape(1, -1), v.numpy().reshape(1, -1), r.numpy()
    except (RuntimeError, NotImplementedError, TypeError):   # a tensor that cannot come to the CPU (meta, ...)
        return None
    if problem(*arrays, classes) is not None:
        return None
    return TopK(i.reshape(1, -1).clone(), v.reshape(1, -1).clone(), r.clone(), classes)
