"""Where a step's wall clock goes: data, uncertainty pass, mixing, teacher, student, eval."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class PhaseTimer:
    """Accumulates wall seconds per named phase.

    On CUDA each phase ends with a synchronise, so GPU work is charged to the
    phase that queued it rather than to whichever phase waits next.
    """

    def __init__(self, device: torch.device | None = None):
        self.sync = device is not None and device.type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def as_dict(self) -> dict[str, float]:
        return dict(self.seconds)

    def load(self, seconds: dict[str, float]) -> None:
        self.seconds.clear()
        self.seconds.update(seconds)


NULL_TIMER = PhaseTimer()
