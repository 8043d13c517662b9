"""The server's counters since start; one lock, read as a consistent snapshot."""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field


@dataclass
class ServerCounters:
    requests: int = 0
    images: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    forward_seconds: float = 0.0
    flops_served: float = 0.0
    failed_requests: int = 0
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        self._lock = threading.Lock()

    def record(self, *, images: int, bytes_in: int, bytes_out: int, seconds: float, flops: float) -> None:
        with self._lock:
            self.requests += 1
            self.images += images
            self.bytes_in += bytes_in
            self.bytes_out += bytes_out
            self.forward_seconds += seconds
            self.flops_served += flops

    def record_failure(self) -> None:
        with self._lock:
            self.failed_requests += 1

    def snapshot(self) -> dict:
        with self._lock:
            snap = asdict(self)
        snap["uptime_seconds"] = time.monotonic() - snap.pop("started")
        return snap
