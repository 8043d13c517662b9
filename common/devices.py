"""Where a process computes: one reading of ``--device`` for the trainer, the server and the exporter."""
from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``name`` as a device: "auto" is CUDA where there is one, else the CPU. A CUDA device asked for on a
    machine without one is a one-line ValueError, here rather than at the first tensor moved there."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return device
