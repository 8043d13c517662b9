"""The server's counters since start; one lock, read as a consistent snapshot.

Per request (answered ones): requests, images, bytes in and out, the request's
share of its batch's forward seconds (its images / the batch's images) and the
FLOPs served (images answered from the answer store ran no forward and cost
none); of the images, those rendered from view recipes (with the seconds that
took), those answered from the store and those re-asked to check a stored
answer (the request's ``verify``); failed requests. The same per client
(the ``x-client-id`` each call carries) for up to ``max_clients`` distinct
well-formed ids. Per forward (server-wide: a batch mixes clients): forwards,
the images they ran, and busy seconds (wall time in the model's forward call), so that
``mean batch = forward_images / forwards`` and ``busy fraction = busy_seconds / uptime``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field


class TooManyClients(RuntimeError):
    """The server already counts ``max_clients`` clients apart; a new one is counted in the totals only."""


@dataclass
class ClientCounts:
    """Per-request counts: kept for the server as a whole and for each client apart."""
    requests: int = 0
    images: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    forward_seconds: float = 0.0
    flops_served: float = 0.0
    failed_requests: int = 0
    rendered_images: int = 0
    render_seconds: float = 0.0
    store_images: int = 0
    verify_images: int = 0       # of ``images``: re-asks that check a stored answer (InferRequest.verify)


@dataclass
class ServerCounters(ClientCounts):
    """The server's totals (the per-request counts it inherits), per-forward figures, and each client's counts."""
    forwards: int = 0
    forward_images: int = 0
    busy_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)
    max_clients: int = 10_000

    def __post_init__(self):
        self._lock = threading.Lock()
        self._clients: dict[str, ClientCounts] = {}

    def _client(self, client: str | None, create: bool = True) -> ClientCounts | None:
        """That client's counts (under ``_lock``); None: no id, or a new id when the table is full."""
        if not client:
            return None
        counts = self._clients.get(client)
        if counts is None and create and len(self._clients) < self.max_clients:
            counts = self._clients[client] = ClientCounts()
        return counts

    def record(self, *, images: int, bytes_in: int, bytes_out: int, seconds: float, flops: float,
               client: str | None = None, rendered: int = 0, render_seconds: float = 0.0,
               from_store: int = 0, verify: int = 0) -> None:
        """One answered request; ``seconds`` is its share of its batch's forward."""
        with self._lock:
            for c in (self, self._client(client)):
                if c is None:
                    continue
                c.requests += 1
                c.images += images
                c.bytes_in += bytes_in
                c.bytes_out += bytes_out
                c.forward_seconds += seconds
                c.flops_served += flops
                c.rendered_images += rendered
                c.render_seconds += render_seconds
                c.store_images += from_store
                c.verify_images += verify

    def record_failure(self, client: str | None = None) -> None:
        with self._lock:
            self.failed_requests += 1
            counts = self._client(client)
            if counts is not None:
                counts.failed_requests += 1

    def record_forward(self, *, images: int, busy_seconds: float) -> None:
        """One forward of a gathered batch (``images`` from all its requests), succeeded or not."""
        with self._lock:
            self.forwards += 1
            self.forward_images += images
            self.busy_seconds += busy_seconds

    def track(self, client: str) -> None:
        """Count ``client`` apart from now on (a no-op if it is already); TooManyClients if the table is full."""
        with self._lock:
            if self._client(client) is None:
                raise TooManyClients(f"this server already counts {self.max_clients} clients apart; "
                                     f"{client!r} is counted in the totals only")

    def clients(self) -> dict[str, dict]:
        """Every client counted apart -> its per-request counts."""
        with self._lock:
            return {name: asdict(c) for name, c in self._clients.items()}

    def snapshot(self, client: str | None = None) -> dict:
        """The counts; with ``client``, its per-request counts (zeros if it sent nothing yet) beside the
        server-wide per-forward figures and uptime."""
        with self._lock:
            snap = asdict(self)
            if client is not None:
                counts = self._client(client, create=False) or ClientCounts()
                snap.update(asdict(counts))
        snap.pop("max_clients")
        snap["uptime_seconds"] = time.monotonic() - snap.pop("started")
        snap["mean_batch_images"] = snap["forward_images"] / snap["forwards"] if snap["forwards"] else 0.0
        return snap
