"""One run of an experiment: trained in its own trainer process, or its record reused instead."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from student_trainer.tools.experiment.records import NotRecorded, keep_record, recorded_summary

log = logging.getLogger("experiment")


def run_trainer(flags: list[str], scratch: Path, threads: int | None) -> dict:
    """One trainer process (``--threads`` torch threads); its output goes to ``scratch/train.log``."""
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    cmd = [sys.executable, "-m", "student_trainer", *flags, "--out", str(scratch), "--no-progress"]
    with open(scratch / "train.log", "w") as log_file:
        code = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env).returncode
    if code:
        lines = (scratch / "train.log").read_text().strip().splitlines()
        raise RuntimeError(f"{scratch}: the trainer failed (exit {code}): {lines[-1] if lines else 'no output'}")
    return json.loads((scratch / "summary.json").read_text())


def train_or_reuse(flags: list[str], scratch: Path, record: Path, teacher: dict | None = None,
                   url: str | None = None, threads: int | None = None, train: bool = True,
                   fresh_store: Path | None = None) -> dict:
    """Train one run, or reuse its record when that was made with exactly these flags and teacher.

    Checkpoints stay in ``scratch``; the record gets what is small enough to commit. A record made with
    other flags is trained again, never reused; with ``train=False`` (``--records-only``) it raises
    NotRecorded instead. ``fresh_store``: an answer store emptied first, so the run pays its teacher.
    """
    summary = recorded_summary(record, flags, teacher)
    if summary is not None:
        return summary
    if not train:
        raise NotRecorded(str(record))
    log.info("training %s", record)
    shutil.rmtree(scratch, ignore_errors=True)  # never continue a stale run under new flags
    if fresh_store is not None:  # a run (or a sweep's first) pays its teacher from an empty store
        shutil.rmtree(fresh_store, ignore_errors=True)
    summary = run_trainer([*flags, *(["--teacher-url", url] if url else [])], scratch, threads)
    keep_record(scratch, record, flags, teacher)
    return summary


def asks_teacher(flags: list[str]) -> bool:
    """Whether a run with these flags queries the teacher; one that does not (ce) holds across teachers."""
    from student_trainer.cli import build_parser, resolve_method
    from student_trainer.distill import loss_needs_teacher

    args, _ = build_parser().parse_known_args(flags)
    resolve_method(args)
    return loss_needs_teacher(args.loss)
