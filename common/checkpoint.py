"""The checkpoint format shared by the trainer (writes) and the server (reads).

A plain dict, so a checkpoint opens with ``torch.load`` alone:
``format``, ``arch``, ``num_classes``, ``in_channels``, ``input_shape``,
``state_dict`` and ``meta`` (training metadata: data set, method, epoch, top-1,
...). Training state (optimiser, scheduler, RNG, counters) rides along under
other keys when the trainer saves for resuming.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "unix-kd/1"
REQUIRED = ("arch", "num_classes", "in_channels", "input_shape", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint that is missing or not ours; the message says which."""


def make_checkpoint(model: nn.Module, *, arch: str, num_classes: int,
                    input_shape: tuple[int, int, int], meta: dict | None = None,
                    **extra: Any) -> dict:
    return {"format": FORMAT, "arch": arch, "num_classes": int(num_classes),
            "in_channels": int(input_shape[0]), "input_shape": tuple(int(d) for d in input_shape),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "meta": dict(meta or {}), **extra}


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> Path:
    """Write atomically (temp file, fsync, rename): a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    missing = [k for k in REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a unix-kd checkpoint (missing {', '.join(missing)})")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    from common.models import build_model

    model = build_model(ckpt["arch"], num_classes=ckpt["num_classes"], in_channels=ckpt["in_channels"])
    model.load_state_dict(ckpt["state_dict"])
    return model
