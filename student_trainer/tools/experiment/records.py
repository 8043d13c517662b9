"""A run's record beside the results (``runs/GROUP/seedS/``), and when it may stand in for training the run.

A record keeps what is small enough to commit: ``summary.json``, ``metrics.jsonl`` and ``run.json`` (the
exact trainer flags, the teacher's checkpoint and sha256, the commit). It is reused only when its flags and
teacher match exactly, so an experiment continues on another machine from committed records and every
number can be checked against its run. A trainer flag renamed since a record was written is read under its
new name (``RENAMED_FLAGS``), so a rename alone retrains nothing. A run's answer store is scratch: records
are compared by its group and seed folder (``GROUP/seedS`` or ``GROUP/shared``), not by the experiment's
``out`` it lies under, so two experiments in one regime share their runs.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger("experiment")
RUN_FILES = ("summary.json", "metrics.jsonl")  # what a run record keeps: small, committed with the results
# Trainer flags renamed since committed records were written, old name -> new name.
RENAMED_FLAGS = {"--answer-store": "--replay-store"}


class NotRecorded(Exception):
    """``--records-only``: this run has no record made with exactly these flags and teacher."""


def current_flags(flags: list[str] | None) -> list[str] | None:
    """A saved record's flags as the trainer names them today: each renamed flag under its new name."""
    return None if flags is None else [RENAMED_FLAGS.get(flag, flag) for flag in flags]


def store_by_folder(flags: list[str] | None) -> list[str] | None:
    """The flags with each ``--replay-store`` path cut to its last two parts (its group and seed folder)."""
    if flags is None:
        return None
    return [Path(value).parent.name + "/" + Path(value).name if i and flags[i - 1] == "--replay-store" else value
            for i, value in enumerate(flags)]


def recorded_summary(record: Path, flags: list[str], teacher: dict | None) -> dict | None:
    """The record's summary when it was made with exactly these flags and teacher; None when there is none."""
    provenance = record / "run.json"
    if not (provenance.is_file() and (record / "summary.json").is_file()):
        return None
    saved = json.loads(provenance.read_text())
    if store_by_folder(current_flags(saved.get("flags"))) == store_by_folder(flags) and saved.get("teacher") == teacher:
        log.info("reusing %s (same flags and teacher)", record)
        return json.loads((record / "summary.json").read_text())
    log.info("%s was made with other flags or another teacher: not reused", record)
    return None


def keep_record(scratch: Path, record: Path, flags: list[str], teacher: dict | None) -> None:
    """Copy a finished run's small files from ``scratch`` (checkpoints stay there) and write its ``run.json``."""
    record.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if record.resolve() != scratch.resolve():
            shutil.copyfile(scratch / name, record / name)
    (record / "run.json").write_text(
        json.dumps({"flags": flags, "teacher": teacher, "commit": current_commit()}, indent=2) + "\n")


def current_commit() -> str:
    """The checkout's short commit, marked when tracked files differ from it ("unknown" outside git)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        return sha + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
