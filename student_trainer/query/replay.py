"""Beyond the paper: pay the teacher once per view. Each image keeps at most V stored views with their answers
(FKD's stored soft labels with their crops); once an image has V, a visit replays one of them."""
from __future__ import annotations

import hashlib
import logging
import os
import secrets

from dataclasses import dataclass

import numpy as np
import torch

from common.answer_store.codec import Entry
from common.views import Views, render_views
from student_trainer.engine.timing import NULL_TIMER
from student_trainer.config import setting
from student_trainer.query.base import PolicyConfig, QueryPolicy, unmixed
from student_trainer.query.store_check import StoreCheck
from student_trainer.query.stored_views import ViewShelf, recipe_of, views_of

log = logging.getLogger("student_trainer")


@dataclass(frozen=True)
class ReplayConfig(PolicyConfig):
    views: int = setting(1, "replay: views stored per image (the teacher sees each image V times in all)",
                         flag="--views", metavar="V")
    verify_store: float = setting(0.0, "replay: ask the teacher again about this fraction of the replayed views "
                                  "(a seeded choice) and compare its answers with the stored ones: mean absolute "
                                  "difference and the share of top-k classes that differ, in the summary; a store "
                                  "written by another teacher, or views that no longer render the same, show "
                                  "there. Training uses the stored answers all the same", flag="--verify-store",
                                  metavar="F")

    def __post_init__(self):
        super().__post_init__()
        if self.views < 1:
            raise ValueError(f"--views must be at least 1, got {self.views}")
        if not 0.0 <= self.verify_store <= 1.0:
            raise ValueError(f"--verify-store is a fraction of the replayed views, 0 to 1; got {self.verify_store}")


class Replay(QueryPolicy):
    """A visit to an image with fewer than V stored views trains on a fresh view, asks the teacher about it
    and stores the answer with the view's recipe; a visit to an image with V views trains on one of them (a
    seeded choice), exactly as stored, with the stored answer, and asks the teacher nothing.

    The student never learns from an answer computed on another view than its own (Beyer et al.'s
    consistency, which ``cached`` gives up). Views are unmixed. The store (``--replay-store``) outlives
    the run: another seed, another student or another host with the same teacher and data starts with
    every view stored before. A resumed run is exact: views its crashed twin stored after the checkpoint
    count as not yet there (it finds each one again, as the view it draws, and takes the stored answer).
    """
    name = "replay"
    about = ("every image, unmixed; each image's first V views go to the teacher and into --replay-store, "
             "later visits replay a stored view with its stored answer (beyond the paper)")
    config_type = ReplayConfig
    needs_store, reads_weights = True, False  # a store of answers; the choice reads no weights

    def __init__(self, config: ReplayConfig | None = None, dataset_size: int = 0, context=None):
        super().__init__(config, dataset_size, context)
        if context is None or context.store is None or context.stored is None or not context.teacher_sha256:
            raise ValueError("--query replay needs a replay store, a teacher's identity and a data set whose "
                             "views are recipes")
        self.stored, self.v = context.stored, self.config.views
        self.shelf = ViewShelf(context.store, teacher_sha256=context.teacher_sha256,
                               data_fingerprint=context.stored.fingerprint, keys=list(context.keys), views=self.v,
                               classes=context.classes)
        self.run_id = secrets.randbits(32)     # who wrote an entry (32 bits, a compact entry's); restored on resume
        self.completes = 0                     # steps answered so far; an entry records the one it was stored in
        self.verified = StoreCheck()           # --verify-store's comparisons so far

    @property
    def teacher_images_per_batch(self) -> int:
        return self.batch_size  # until the views are stored; the counters say what was really sent

    def preflight(self, dataset_size: int, stored_only: bool) -> None:
        """With no teacher to ask: refuse, before training, a run whose views are not all stored."""
        if not stored_only:
            return
        if self.config.verify_store > 0:
            raise ValueError("--verify-store re-asks the teacher about stored views: give --teacher-url")
        samples = (self.stored.origin.tolist() if self.stored.origin is not None
                   else list(range(dataset_size)))
        short = 0
        for first in range(0, len(samples), 4096):
            short += sum(sum(e is not None for e in slots) < self.v
                         for slots in self.shelf.read(samples[first:first + 4096]))
        if short:
            raise ValueError(f"{short} of {len(samples)} training images have fewer than --views {self.v} views "
                             f"stored in {self.shelf.store.url}: give --teacher-url to ask the teacher about them")
        log.info("every training image has its %d views stored in %s: no teacher is needed", self.v,
                 self.shelf.store.url)

    def _counted(self, entry: Entry | None) -> bool:
        """Was the entry there when this step was chosen in the uninterrupted run? (Not when this very run
        wrote it at a later step: a resumed run finds its crashed twin's later writes.)"""
        return entry is not None and not (entry.header.get("run") == self.run_id
                                          and entry.header.get("step", -1) >= self.completes)

    def loader_lookahead(self) -> "StoredViewLookahead":
        """Loader processes render the stored views a step will replay: each image decoded once, there."""
        return StoredViewLookahead(self.shelf.store.url, self.shelf.names, self.v)

    def select(self, student, images, labels, indices, timer=NULL_TIMER, views=None, rendered=None):
        """``views``: the views drawn for this step; ``rendered``: the recipes the loader rendered ``images``
        from where its lookahead put stored views in their place (None: ``views`` themselves). Every row
        whose recipe here differs from the one rendered is rendered again, so the images are the same
        whatever the lookahead guessed."""
        if views is None:
            raise ValueError("--query replay needs each view as a recipe (--augment-draws batched)")
        with timer.phase("store"):
            drawn = views.as_array().tolist()
            samples = [row[0] for row in drawn]
            slots = self.shelf.read(samples)
        ask = torch.zeros(len(samples), dtype=torch.bool)
        rows, replayed, known = list(drawn), [], {k: [] for k in self.shelf.keys}
        for i, entries in enumerate(slots):
            there = [e for e in entries if self._counted(e)]
            if len(there) >= self.v:
                entry = replayed_entry(there, drawn[i])
                rows[i] = recipe_of(entry)
                replayed.append(i)
            else:
                entry = next((e for e in entries if e is not None and recipe_of(e) == drawn[i]), None)
                if entry is None:
                    ask[i] = True
                    continue
            for k in known:
                known[k].append(entry.tensors[k])
        had = rendered.as_array().tolist() if rendered is not None else drawn
        redo = [i for i in range(len(rows)) if rows[i] != had[i]]
        if redo:
            with timer.phase("data"):
                again = views_of([rows[i] for i in redo])
                images = images.clone()
                images[torch.tensor(redo, device=images.device)] = render_views(
                    self.stored, self.stored.to_rows(again)).to(images.device, images.dtype)
        q = unmixed(images, labels, indices, views=views_of(rows), ask=ask.to(images.device),
                    known={k: torch.stack(v).float() for k, v in known.items() if v})
        q.verify = self.verified.rows(drawn, replayed, self.config.verify_store, images.device)
        q.parts = {"teacher_fraction": q.teacher_rows / max(len(samples), 1),
                   "replayed_fraction": len(replayed) / max(len(samples), 1)}
        return q

    def complete(self, query, answer):
        ask = query.ask.cpu()
        out = {}
        for key in self.shelf.keys:
            fresh = answer.get(key)
            like = fresh if fresh is not None else query.known[key]
            full = torch.empty(len(ask), *like.shape[1:], dtype=torch.float32)
            if fresh is not None:
                full[ask] = fresh.cpu().float()
            if bool((~ask).any()):
                full[~ask] = query.known[key].cpu().float()
            out[key] = full
        if bool(ask.any()):
            self._store(query, answer)
        self.completes += 1
        return out

    def check(self, query, fresh) -> None:  # --verify-store
        self.verified.compare(query, fresh, self.shelf.keys)

    def _store(self, query, answer) -> None:
        """Each asked view into its image's first free slot (none taken twice, a view never stored twice)."""
        rows = query.views.as_array()[query.ask.cpu().numpy()].tolist()
        samples = [row[0] for row in rows]
        slots = self.shelf.read(samples)
        keep, free, entries = [], [], []
        for i, (row, entries_i) in enumerate(zip(rows, slots)):
            if any(e is not None and recipe_of(e) == row for e in entries_i):
                continue
            keep.append(samples[i])
            free.append([j for j, e in enumerate(entries_i) if e is None])
            entries.append(Entry({"recipe": row, "run": self.run_id, "step": self.completes},
                                 {k: answer[k][i].cpu().contiguous() for k in self.shelf.keys}))
        if keep:
            self.shelf.write(keep, free, entries)

    def state_dict(self):
        return {**super().state_dict(), "run_id": self.run_id, "completes": self.completes,
                "verified": self.verified.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.run_id, self.completes = state["run_id"], state["completes"]
        self.verified.load_state_dict(state.get("verified", {}))

    def report(self) -> dict | None:
        return self.verified.report(self.config.verify_store)   # --verify-store's findings (None without it)


def replay_choice(drawn_row: list[int]) -> float:
    """Which of an image's stored views a visit replays, as a number in [0, 1): a pure function of the view
    drawn for the visit (itself one of seed, epoch and sample), so a loader process and the policy pick the
    same one, and a resumed run the same as the uninterrupted one."""
    digest = hashlib.blake2b(np.asarray(drawn_row, dtype="<i8").tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64


def replayed_entry(there: list[Entry], drawn_row: list[int]) -> Entry:
    """The stored view (of an image's ``there``, at least one) that the visit drawing ``drawn_row`` replays."""
    return there[min(int(replay_choice(drawn_row) * len(there)), len(there) - 1)]


class StoredViewLookahead:
    """Run in a loader process: each drawn view whose image already has V views stored is replaced by the
    stored view the policy will most likely replay (``replay_choice``), so the loader renders that one. A
    guess, never trusted: the policy decides from the store as it is at the step and renders again any row
    guessed wrong (a view stored meanwhile, or a resumed run's discounted ones). Opens its own connection to
    the store in each process (a store handle does not cross processes)."""

    def __init__(self, url: str, names: dict, views: int):
        self.url, self.names, self.views = url, names, views
        self._shelf, self._pid = None, None

    def __getstate__(self):
        return {"url": self.url, "names": self.names, "views": self.views}

    def __setstate__(self, state):
        self.__init__(state["url"], state["names"], state["views"])

    def __call__(self, drawn: np.ndarray) -> np.ndarray:
        """Rows (the whole split's names) to render in place of the ``drawn`` rows."""
        if self._shelf is None or self._pid != os.getpid():
            from common.answer_store import open_store

            self._shelf, self._pid = ViewShelf(open_store(self.url), views=self.views, **self.names), os.getpid()
        rows = drawn.copy()
        for i, entries in enumerate(self._shelf.read(drawn[:, 0].tolist())):
            there = [e for e in entries if e is not None]
            if len(there) >= self.views:
                rows[i] = recipe_of(replayed_entry(there, drawn[i].tolist()))
        return rows
