"""What every teacher client offers the training loop, and the counters it keeps."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

import torch


class TeacherUnavailable(ConnectionError):
    """The teacher could not be reached (within the total wait, where the client retries).

    The trainer catches it to save its progress before it stops.
    """


@dataclass
class TeacherInfo:
    model_name: str
    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    feature_names: list[str]
    flops_per_image: float
    max_batch_size: int


@dataclass
class ClientCounters:
    """What the student side sent and waited for; compared with the server's own count."""
    requests: int = 0
    images: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    wait_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ServerStats:
    """The server's own counters, as its statistics endpoint reports them."""
    images: int
    requests: int
    bytes_in: int | None = None    # None: this server does not count bytes (Triton)
    bytes_out: int | None = None
    forward_seconds: float = 0.0
    source: str = ""


class TeacherClient(ABC):
    """A teacher somewhere: ``infer`` turns an image batch into logits (and features)."""

    def __init__(self):
        self.counters = ClientCounters()

    @abstractmethod
    def describe(self) -> TeacherInfo: ...

    @abstractmethod
    def _infer(self, images: torch.Tensor, outputs: list[str]) -> tuple[dict[str, torch.Tensor], int, int]:
        """Return (outputs, bytes sent, bytes received) for one batch within the max batch."""

    @abstractmethod
    def server_stats(self) -> ServerStats: ...

    def close(self) -> None:
        pass

    def infer(self, images: torch.Tensor, outputs=("logits",)) -> dict[str, torch.Tensor]:
        """Ask the teacher about ``images`` (split to the server's max batch); outputs float32 on CPU."""
        outputs = list(outputs)
        start = time.perf_counter()
        step = self.describe().max_batch_size
        parts = []
        for chunk in torch.split(images.detach(), step):
            result, sent, received = self._infer(chunk, outputs)
            parts.append(result)
            c = self.counters
            c.requests += 1
            c.images += chunk.shape[0]
            c.bytes_sent += sent
            c.bytes_received += received
        self.counters.wait_seconds += time.perf_counter() - start
        return {o: torch.cat([p[o] for p in parts]) if len(parts) > 1 else parts[0][o] for o in outputs}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
