"""Every (group, seed) run of an experiment, ``--jobs`` at a time, in config order.

A ``match_compute`` group waits for the group it matches; that group's runs were queued first, so they are
running or done when it waits (no deadlock). A group with a shared answer store trains its seeds one after
another in one worker: the first fills the store, the later ones find its answers there.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from student_trainer.tools.experiment.config import group_options, store_mode, to_flags
from student_trainer.tools.experiment.records import NotRecorded
from student_trainer.tools.experiment.training import asks_teacher, train_or_reuse


def store_flags(group: dict, seed: int, out: Path) -> tuple[list[str], Path | None]:
    """The run's ``--replay-store`` flags, and the store to empty before it (None: keep what is there).

    "own": each run its own, empty store; "shared": the group's seeds one after another on one store (a
    sweep: the first pays the teacher, the others find its answers).
    """
    mode = store_mode(group)
    if not mode:
        return [], None
    store = out / "stores" / group["name"] / (f"seed{seed}" if mode == "own" else "shared")
    fresh = store if mode == "own" or seed == group.get("seeds", [0])[0] else None
    return ["--replay-store", str(store)], fresh


def train_groups(config: dict, base: list[str], out: Path, records: Path, teacher: dict, url: str | None,
                 jobs: int, threads: int | None) -> dict[str, list[dict | None]]:
    """Each group's run summaries, seed by seed. Without ``url`` (``--records-only``) nothing trains: a run
    without its record is None, and so is every run of a group that matches its compute."""
    runs: dict[str, list[Future]] = {}

    def one(group: dict, seed: int) -> dict | None:
        target = group.get("match_compute")
        finished = {target: [f.result() for f in runs[target]]} if target in runs else {}
        if any(s is None for s in finished.get(target, [])):
            return None  # what it matches was not run: nor is it
        flags = [*base, *to_flags(group_options(group, finished)), "--seed", str(seed)]
        extra, fresh = store_flags(group, seed, out)
        flags += extra
        # A run that asks the teacher nothing (ce) does not depend on it: its record holds across teachers.
        asks = asks_teacher(flags)
        name = group["name"]
        try:
            return train_or_reuse(flags, out / name / f"seed{seed}", records / name / f"seed{seed}",
                                  teacher if asks else None, url if asks else None, threads,
                                  train=url is not None, fresh_store=fresh)
        except NotRecorded:
            return None

    with ThreadPoolExecutor(jobs) as pool:
        try:
            for group in config["groups"]:
                seeds = group.get("seeds", [0])
                if group.get("answer_store") == "shared":  # a sweep: its seeds in order, in one worker
                    runs[group["name"]] = [Future() for _ in seeds]
                    pool.submit(_in_order, one, group, seeds, runs[group["name"]])
                else:
                    runs[group["name"]] = [pool.submit(one, group, seed) for seed in seeds]
            return {name: [f.result() for f in fs] for name, fs in runs.items()}
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _in_order(one, group: dict, seeds: list[int], futures: list[Future]) -> None:
    """Train a group's seeds one after another, each result into its future (a failure into this and the rest)."""
    for i, seed in enumerate(seeds):
        try:
            futures[i].set_result(one(group, seed))
        except BaseException as e:
            for f in futures[i:]:
                f.set_exception(e)
            return
