"""``--verify-store``: stored answers checked against the teacher's fresh ones, as TinyViT's replay check does.

A replayed view trains on the answer stored with it. A store written by another teacher under this one's
name, a damaged store, or views that no longer render as they did when stored (another decoder, another
normalisation) would train the student on answers to other images, silently. Asking the teacher again about
a seeded fraction of the replayed views and comparing shows it: the mean absolute difference of the answers
and the share of the top-k classes that differ (TinyViT's ``--check-saved-logits``). What remains on a
sound store is the forward's own noise: another batch composition, float16 on the wire or in a top-k answer.
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch

from common import reductions

log = logging.getLogger("student_trainer")

TOP_K = 5                  # classes compared for a dense answer (a top-k answer compares its own K)
MEAN_ABS_LIMIT = 1e-2      # above this mean absolute difference, or ...
TOPK_DIFFER_LIMIT = 0.01   # ... this share of differing top-k classes, the run warns (once)


def verify_choice(drawn_row: list[int]) -> float:
    """Whether a replayed visit is checked (``< --verify-store``): a number in [0, 1), a pure function of the
    view drawn for it (apart from the replay's own choice), so a resumed run checks the same visits."""
    digest = hashlib.blake2b(np.asarray(drawn_row, dtype="<i8").tobytes(), digest_size=8,
                             person=b"verify-store").digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64


class StoreCheck:
    """Which replayed rows to check, and running sums of the comparisons, per output key."""

    def __init__(self):
        self.sums: dict[str, dict[str, float]] = {}
        self.warned = False

    @staticmethod
    def rows(drawn: list[list[int]], replayed: list[int], fraction: float, device) -> torch.Tensor | None:
        """The step's rows to check (a bool mask over ``drawn``): the replayed ones ``verify_choice`` picks;
        None where there are none."""
        if fraction <= 0:
            return None
        mask = torch.zeros(len(drawn), dtype=torch.bool)
        mask[[i for i in replayed if verify_choice(drawn[i]) < fraction]] = True
        return mask.to(device) if bool(mask.any()) else None

    def compare(self, query, fresh: dict[str, torch.Tensor], keys: list[str]) -> None:
        """The teacher's fresh answers for ``query.verify``'s rows against the stored ones (``query.known``,
        which holds the rows not asked, in order)."""
        at = torch.cumsum(~query.ask.cpu(), 0)[query.verify.cpu()] - 1    # those rows' places in ``known``
        for key in keys:
            self.add(key, query.known[key].cpu()[at].float(), fresh[key].cpu().float())
        self.warn_once()

    def add(self, key: str, stored: torch.Tensor, fresh: torch.Tensor) -> None:
        """One batch of ``n`` images' answers for ``key``, stored and fresh (float32, same shape)."""
        s = self.sums.setdefault(key, {"images": 0, "values": 0, "abs_diff": 0.0, "max_abs_diff": 0.0,
                                       "topk_rows": 0, "topk_differ": 0.0})
        diff = (stored - fresh).abs()
        s["images"] += stored.shape[0]
        s["values"] += diff.numel()
        s["abs_diff"] += float(diff.double().sum())
        s["max_abs_diff"] = max(s["max_abs_diff"], float(diff.max()) if diff.numel() else 0.0)
        if stored.dim() == 2 and stored.shape[1] > 1:
            k = min(reductions.top_k(reductions.parse_key(key)[1]) or TOP_K, stored.shape[1])
            a, b = stored.topk(k, dim=1).indices, fresh.topk(k, dim=1).indices
            shared = (a.unsqueeze(2) == b.unsqueeze(1)).any(dim=2).sum(dim=1)   # classes in both top-k
            s["topk_rows"] += stored.shape[0]
            s["topk_differ"] += float((1 - shared.double() / k).sum())
            s["k"] = k

    def figures(self, key: str) -> dict:
        s = self.sums[key]
        return {"images": s["images"], "mean_abs_diff": s["abs_diff"] / max(s["values"], 1),
                "max_abs_diff": s["max_abs_diff"], "k": s.get("k"),
                "topk_differ": s["topk_differ"] / s["topk_rows"] if s["topk_rows"] else None}

    def warn_once(self) -> None:
        if self.warned:
            return
        for key in self.sums:
            f = self.figures(key)
            if f["mean_abs_diff"] > MEAN_ABS_LIMIT or (f["topk_differ"] or 0.0) > TOPK_DIFFER_LIMIT:
                self.warned = True
                log.warning("--verify-store: the stored answers differ from the teacher's (%s: mean |difference| "
                            "%.3g, %.1f%% of top-%s classes differ, over %d images): another teacher's store, "
                            "or views that no longer render the same?", key, f["mean_abs_diff"],
                            100 * (f["topk_differ"] or 0.0), f["k"], f["images"])
                return

    def report(self, fraction: float) -> dict | None:
        """For the summary: the fraction checked, whether the run warned, each key's figures (None: no check)."""
        if fraction <= 0:
            return None
        return {"fraction": fraction, "warned": self.warned, "keys": {key: self.figures(key) for key in self.sums}}

    def state_dict(self) -> dict:
        return {"sums": {k: dict(v) for k, v in self.sums.items()}, "warned": self.warned}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {k: dict(v) for k, v in state.get("sums", {}).items()}
        self.warned = bool(state.get("warned", False))
