"""The checkpoint format shared by the trainer (writes) and the server (reads).

A plain dict, so a checkpoint opens with ``torch.load`` alone:
``format``, ``arch``, ``num_classes``, ``in_channels``, ``input_shape``,
``state_dict`` and ``meta`` (training metadata: data set, method, epoch, top-1,
...). Training state (optimiser, scheduler, RNG, counters) rides along under
other keys when the trainer saves for resuming.

Every checkpoint is read with ``torch.load(..., weights_only=True)``
(``read_checkpoint_file``): tensors, numbers, strings and containers, never a
pickled callable, so opening a file cannot run code. What we write keeps to
that (the trainer stores RNG state as tensors and lists, not numpy objects).
The one class let through is ``argparse.Namespace`` (``SAFE_CLASSES``): timm's and
DeiT's ``train.py`` save their flags in one beside the weights, and it only holds values.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "unix-kd/1"
REQUIRED = ("arch", "num_classes", "in_channels", "input_shape", "state_dict")
SAFE_CLASSES = [argparse.Namespace]  # plain attribute holders, beside containers and tensors


class CheckpointError(ValueError):
    """A checkpoint that is missing or not ours; the message says which."""


def make_checkpoint(model: nn.Module, *, arch: str, num_classes: int,
                    input_shape: tuple[int, int, int], meta: dict | None = None,
                    **extra: Any) -> dict:
    return {"format": FORMAT, "arch": arch, "num_classes": int(num_classes),
            "in_channels": int(input_shape[0]), "input_shape": tuple(int(d) for d in input_shape),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "meta": dict(meta or {}), **extra}


def plain(value):
    """``value`` in types a weights-only load accepts: paths become strings, numpy values lists and numbers.

    For what is stored only to be read by people (the trainer's flags); anything else becomes its ``str``.
    """
    if value is None or type(value) in (str, bool, int, float) or isinstance(value, torch.Tensor):
        return value  # (exact types: numpy.float64 is a float, but pickles as a numpy object)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value] if isinstance(value, list) else tuple(plain(v) for v in value)
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return plain(value.tolist())
    return str(value)


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


def _unsafe_globals(path: Path, error: Exception) -> list[str]:
    """The pickled callables/classes that made a weights-only load refuse ``path`` (read, never run)."""
    try:  # zip checkpoints: a static scan of the pickle
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the legacy (pre-1.6) format: torch's message names the first one
        names = []
    return sorted(names) or re.findall(r"GLOBAL (\S+) was not an allowed global", str(error))


def read_checkpoint_file(path: str | os.PathLike, map_location: str = "cpu"):
    """``torch.load(path, weights_only=True)``, every failure as one CheckpointError line.

    Only tensors, numbers, strings and containers are unpickled; a file that needs
    anything else (a class, a function, a numpy array) is refused before any of it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(SAFE_CLASSES):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path, e)
        if names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise CheckpointError(
                f"{path}: refuses to load: it holds Python objects that could run code ({shown}); "
                "checkpoints are read with torch.load(weights_only=True): tensors, numbers, strings "
                "and containers only") from None
        raise CheckpointError(f"cannot read checkpoint {path}: {' '.join(str(e).split())[-300:]}") from None
    except Exception as e:  # torch raises many types for a damaged file
        detail = " ".join(str(e).split()) or type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (is it a file torch.save wrote?): {detail}") from None


def is_ours(obj) -> bool:
    """A checkpoint in this project's format (as opposed to another project's state dict)."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def check_ours(obj, path: str | os.PathLike) -> dict:
    missing = [k for k in REQUIRED if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise CheckpointError(f"{path} is not a unix-kd checkpoint (missing {', '.join(missing)})")
    return obj


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """Read one of our own checkpoints (weights-only, see ``read_checkpoint_file``)."""
    return check_ours(read_checkpoint_file(path, map_location), path)


def _listed(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_state_strictly(model: nn.Module, state_dict: dict, *, arch: str, source: str | os.PathLike,
                        hint: str = "") -> None:
    """``model.load_state_dict`` that accepts nothing less than every key, and says in one line what did not fit."""
    own = model.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
                  for k, v in state_dict.items() if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    if not mismatched:
        result = model.load_state_dict(state_dict, strict=False)  # (torch fills an old file's num_batches_tracked)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    else:
        missing, unexpected = [k for k in own if k not in state_dict], [k for k in state_dict if k not in own]
    if mismatched or missing or unexpected:
        parts = [f"missing {_listed(missing)}" if missing else "",
                 f"unexpected {_listed(unexpected)}" if unexpected else "",
                 f"shape mismatch {_listed(mismatched, 2)}" if mismatched else ""]
        raise CheckpointError(f"{source}: the weights do not fit {arch}: " + "; ".join(p for p in parts if p)
                              + (f"; {hint}" if hint else ""))


def model_from_checkpoint(ckpt: dict, source: str | os.PathLike = "checkpoint") -> nn.Module:
    from common.models import build_model

    model = build_model(ckpt["arch"], num_classes=ckpt["num_classes"], in_channels=ckpt["in_channels"],
                        image_size=tuple(ckpt["input_shape"])[1:])
    load_state_strictly(model, ckpt["state_dict"], arch=ckpt["arch"], source=source)
    return model
