"""The run's folder (``--out``): never written over another run without being asked to.

A folder that holds a run, finished or only started (any of ``RUN_FILES``), is
refused in one line naming the two ways on: ``--resume`` that folder continues
the run, ``--overwrite`` removes its files first (TensorBoard events included),
so a new run never mixes with an old one. Other files there (a runner's log,
notes) are no run and are left alone. Under torchrun rank 0 alone looks and
clears, and the other ranks wait for its verdict.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from student_trainer.engine.distributed import decided_on_master

log = logging.getLogger("student_trainer")

DATA_RECORD = "data.json"
"""The run's data as it trained on it: classes, input shape, the normalisation and where it came from."""

# What a run writes in its folder: checkpoints (run_state), metrics, events and indices (run_log), the data it
# trained on (build), the summary.
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "summary.json", "tensorboard", "indices.rank*.jsonl", DATA_RECORD)


def run_files(out: Path) -> list[Path]:
    """The files (and the TensorBoard folder) of a run in ``out``."""
    return sorted(path for pattern in RUN_FILES for path in out.glob(pattern))


def continues(resume: str | None, out: Path) -> bool:
    """``--resume`` names ``out`` or a checkpoint in it: the run there goes on, as asked."""
    if not resume:
        return False
    path = Path(resume)
    return (path if path.is_dir() else path.parent).resolve() == out.resolve()


def clear(out: Path, found: list[Path]) -> None:
    for path in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    log.info("--overwrite: removed the earlier run's %s from %s", ", ".join(p.name for p in found), out)


def check_or_clear(out: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse ``out`` if it holds another run (one line), or clear that run with ``overwrite``."""
    found = run_files(out)
    if not found or continues(resume, out):
        return
    if not overwrite:
        raise ValueError(f"{out} holds a run already ({', '.join(p.name for p in found)}): continue it with "
                         f"--resume {out}, or replace it with --overwrite")
    clear(out, found)


def claim(out: Path, resume: str | None, overwrite: bool) -> Path:
    """``--out``, made ready for this run on every rank: rank 0 checks it (and clears it with ``--overwrite``)
    while the others wait, so no rank writes there before the verdict."""
    decided_on_master(lambda: check_or_clear(out, resume, overwrite))
    out.mkdir(parents=True, exist_ok=True)
    return out
