"""The teacher an experiment's groups learn from: a committed checkpoint, or one trained with ``--method ce``."""
from __future__ import annotations

import hashlib
from pathlib import Path

from student_trainer.tools.experiment.config import to_flags
from student_trainer.tools.experiment.training import train_or_reuse


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_identity(checkpoint: Path) -> dict:
    """What a run record names its teacher by: a record made against other weights is not reused."""
    return {"checkpoint": str(checkpoint), "sha256": sha256(checkpoint)}


def shipped_teacher(path: Path) -> tuple[Path, dict]:
    """A committed teacher (``[teacher] checkpoint = PATH``): served as it is, its facts read from it."""
    from common.checkpoint import load_checkpoint, model_from_checkpoint
    from common.flops import forward_flops_per_image

    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt)
    return path, {"arch": ckpt["arch"], "top1": ckpt.get("meta", {}).get("top1"),
                  "student_flops_per_image": forward_flops_per_image(model, ckpt["input_shape"])}


def train_teacher(config: dict, out: Path) -> tuple[Path, dict]:
    """Train (or reuse) the teacher; ``[teacher] out`` lets experiments share one."""
    options = dict(config["teacher"])
    if "checkpoint" in options:
        return shipped_teacher(Path(options["checkpoint"]))
    teacher_dir = Path(options.pop("out", out / "teacher"))
    summary = train_or_reuse(to_flags({**options, "method": "ce"}), teacher_dir, teacher_dir)
    return teacher_dir / "best.pt", summary
