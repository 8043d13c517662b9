"""Answers to view recipes kept in an answer store (the recipe store, ``--recipe-store``), so a recipe asked again runs no forward.

A recipe names its image exactly (given the split's fingerprint), so the answer
of a teacher to it can be kept and given again: the second student of a sweep
that trains on the same recipes costs the server no forwards. Each answer is
one entry per row and output key, under ``namespace(weights sha256, data
fingerprint, key, render dtype, reply dtype)`` + the row's recipe bytes: the
render and reply dtypes are in the name because the answer's bits depend on
them. A request whose rows are all there is answered from the store; otherwise
only the rows missing (any of their keys) are rendered and forwarded, and
written back. The tensor is kept in the reply's dtype (float32 for a uint8
reply, which is quantised over the whole reply), so a stored answer goes out
bit for bit as it went out the first time; a top-k key's answer (``logits.top10``)
is kept compact, its K indices, K values and rest (``common.topk``), as it travels.

A store that fails (a Redis gone) never fails a request: it is logged and the
rows are forwarded.
"""
from __future__ import annotations

import logging

import torch

from common import codec, reductions
from common.answer_store import AnswerStore, Entry, namespace
from common.topk import TopK, from_tensors, to_tensors
from common.views import Views
from protos import teacher_pb2 as pb

log = logging.getLogger("teacher_server")
# The dtype an answer is kept in, by the reply's dtype: the reply's own, but float32 for uint8 (quantised per reply).
_KEPT_AS = {pb.FLOAT32: torch.float32, pb.FLOAT16: torch.float16, pb.BFLOAT16: torch.bfloat16, pb.UINT8: torch.float32}


ANSWER = "answer"   # an entry's tensor (a top-k answer's: ``answer.topk.*``)


class StoredAnswers:
    def __init__(self, store: AnswerStore, weights_sha256: str, fingerprint: str, classes: int = 0):
        self.store = store
        self.names = (weights_sha256, fingerprint)
        self.classes = classes   # the teacher's: a top-k answer's dense length

    def _tensors(self, key: str, answer: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        k = reductions.top_k(reductions.parse_key(key)[1])
        if k is None:
            return {ANSWER: answer.to(dtype).clone()}
        return to_tensors(ANSWER, TopK.from_logits(answer.reshape(1, -1), k))

    def _answer(self, key: str, entry: Entry | None) -> torch.Tensor | None:
        if entry is None:
            return None
        k = reductions.top_k(reductions.parse_key(key)[1])
        if k is None:
            return entry.tensors.get(ANSWER)
        top = from_tensors(ANSWER, entry.tensors, self.classes)
        return None if top is None or top.k != k else top.dense()[0]

    def _keys(self, views: Views, outputs: list[str], render_dtype: int, out_dtype: int) -> list[list[bytes]]:
        """Per row, its key for each output."""
        kept_as = ("render", codec.dtype_name(render_dtype), "reply", codec.dtype_name(out_dtype))
        prefixes = [namespace(*self.names, key, *kept_as) for key in outputs]
        return [[prefix + row for prefix in prefixes] for row in views.keys()]

    def look_up(self, views: Views, outputs: list[str], render_dtype: int,
                out_dtype: int) -> list[dict[str, torch.Tensor] | None]:
        """Each row's answers, or None where any of its keys is not kept."""
        keys = self._keys(views, outputs, render_dtype, out_dtype)
        try:
            found = self.store.read([k for row in keys for k in row])
        except Exception as e:  # the answers can still be computed
            log.warning("answer store %s could not be read (%s); forwarding", self.store.url, _line(e))
            return [None] * len(views)
        rows, per = [], len(outputs)
        for r in range(len(views)):
            answers = {key: self._answer(key, e) for key, e in zip(outputs, found[r * per:(r + 1) * per])}
            rows.append(None if any(a is None for a in answers.values()) else answers)
        return rows

    def keep(self, views: Views, rows: list[int], answers: dict[str, torch.Tensor], render_dtype: int,
             out_dtype: int) -> None:
        """Write the answers of ``rows`` (``answers`` holds theirs, in that order), where not kept yet."""
        keys = self._keys(views.take(rows), list(answers), render_dtype, out_dtype)
        dtype = _KEPT_AS[out_dtype]
        items = [(key, Entry({}, self._tensors(name, answers[name][i], dtype)))
                 for i, row_keys in enumerate(keys) for key, name in zip(row_keys, answers)]
        try:
            self.store.write(items)
        except Exception as e:
            log.warning("answer store %s could not be written (%s); the answers were given all the same",
                        self.store.url, _line(e))


def assemble(found: list[dict[str, torch.Tensor] | None], rows: list[int], computed: dict[str, torch.Tensor],
             outputs: list[str]) -> dict[str, torch.Tensor]:
    """The whole request's answers in row order: kept ones where found, ``computed`` (for ``rows``) elsewhere."""
    out = {}
    for key in outputs:
        parts = [None if f is None else f[key] for f in found]
        for i, row in enumerate(rows):
            parts[row] = computed[key][i]
        out[key] = torch.stack([p.float() for p in parts])  # float32 holds every kept dtype exactly
    return out


def _line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
