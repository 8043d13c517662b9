"""Prometheus metrics of one teacher server, on their own registry and HTTP port.

Each server gets its own ``CollectorRegistry`` (not the process-global one), so
tests and benchmarks can run several servers in one process. Names follow the
Prometheus conventions (``_total`` counters, base units ``_seconds``/``_bytes``);
README maps them to Triton's ``nv_inference_*`` series.
"""
from __future__ import annotations

import re
import threading
import time
from collections import deque
from contextlib import contextmanager

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

PREFIX = "unixkd_teacher"
CLIENT_ID_HEADER = "x-client-id"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
CLIENT_ID_RULE = "1 to 64 characters of A-Z a-z 0-9 . _ : @ -"
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def valid_client_id(client_id: str | None) -> bool:
    return bool(client_id) and _CLIENT_ID.fullmatch(client_id) is not None


def _batch_buckets(max_batch: int) -> tuple[float, ...]:
    """Powers of two up to the server's max batch (and the max batch itself)."""
    edges, b = [], 1
    while b < max_batch:
        edges.append(float(b))
        b *= 2
    return (*edges, float(max_batch))


class BusyWindow:
    """Forward seconds per wall second over the last ``window`` seconds."""

    def __init__(self, window: float = 60.0):
        self.window = window
        self.started = time.monotonic()
        self._spans: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._spans.append((time.monotonic(), seconds))

    def ratio(self) -> float:
        now = time.monotonic()
        start = max(now - self.window, self.started)
        with self._lock:
            while self._spans and self._spans[0][0] < start:
                self._spans.popleft()
            busy = sum(end - max(end - seconds, start) for end, seconds in self._spans)
        return min(1.0, busy / max(now - start, 1e-9))


class TeacherMetrics:
    """What the servicer records per call; ``serve`` exposes it at http://HOST:PORT/metrics."""

    def __init__(self, *, max_batch: int, device: torch.device | None = None, model: dict | None = None,
                 max_clients: int = 100, busy_window: float = 60.0):
        self.registry = r = CollectorRegistry()
        client = ["client_id"]
        self.requests = Counter(f"{PREFIX}_requests", "Infer requests answered", client, registry=r)
        self.failures = Counter(f"{PREFIX}_request_failures", "Infer requests refused or failed, by gRPC code",
                                [*client, "code"], registry=r)
        self.images = Counter(f"{PREFIX}_images", "Images run through the teacher", client, registry=r)
        self.bytes_in = Counter(f"{PREFIX}_request_bytes", "Protobuf bytes of answered requests", client,
                                registry=r)
        self.bytes_out = Counter(f"{PREFIX}_response_bytes", "Protobuf bytes of replies", client, registry=r)
        self.rendered = Counter(f"{PREFIX}_rendered_images", "Images rendered from view recipes (of the images)",
                                client, registry=r)
        self.render_seconds = Counter(f"{PREFIX}_render_seconds", "Wall seconds rendering view recipes", client,
                                      registry=r)
        self.store_images = Counter(f"{PREFIX}_store_images", "Images answered from the answer store, with no "
                                    "forward (of the images)", client, registry=r)
        self.verify_images = Counter(f"{PREFIX}_verify_images", "Images re-asked to check a stored answer (of the "
                                     "images)", client, registry=r)
        self.batch = Histogram(f"{PREFIX}_batch_size_images", "Images per answered request",
                               buckets=_batch_buckets(max_batch), registry=r)
        self.gathered = Histogram(f"{PREFIX}_gathered_batch_images",
                                  "Images per forward: the batch gathered from concurrent requests",
                                  buckets=_batch_buckets(max_batch), registry=r)
        self.gathered_requests = Histogram(f"{PREFIX}_gathered_batch_requests", "Requests per forward",
                                           buckets=_batch_buckets(max_batch), registry=r)
        self.forward = Histogram(f"{PREFIX}_forward_seconds",
                                 "Model forward of one gathered batch (CUDA-synchronised)",
                                 buckets=SECONDS_BUCKETS, registry=r)
        self.forward_failures = Counter(f"{PREFIX}_forward_failures", "Forwards that raised (each fails "
                                        "the requests of its batch with INTERNAL)", registry=r)
        self.queue = Histogram(f"{PREFIX}_queue_seconds",
                               "From the RPC reaching its handler to its batch's forward starting "
                               "(decode, checks and the batcher's queue)", buckets=SECONDS_BUCKETS, registry=r)
        self.request_seconds = Histogram(f"{PREFIX}_request_seconds", "Handler time of answered requests",
                                         buckets=SECONDS_BUCKETS, registry=r)
        self.inflight = Gauge(f"{PREFIX}_inflight_requests", "Infer calls being handled now", registry=r)
        self.malformed = Counter(f"{PREFIX}_malformed_requests", "Calls whose bytes are no message of their "
                                 "method's request type (answered INVALID_ARGUMENT before any check)", ["method"],
                                 registry=r)
        self._busy = BusyWindow(busy_window)
        Gauge(f"{PREFIX}_busy_ratio", f"Forward seconds per wall second over the last {busy_window:g} s "
              "(seconds in the model's forward calls, failed ones included)",
              registry=r).set_function(self._busy.ratio)
        if device is not None and device.type == "cuda":
            Gauge(f"{PREFIX}_device_memory_used_bytes", "CUDA memory allocated by tensors",
                  registry=r).set_function(lambda: torch.cuda.memory_allocated(device))
            Gauge(f"{PREFIX}_device_memory_reserved_bytes", "CUDA memory held by the caching allocator",
                  registry=r).set_function(lambda: torch.cuda.memory_reserved(device))
        if model:
            Info(f"{PREFIX}_model", "The model being served", registry=r).info(model)
        self.max_clients = max_clients
        self._clients: set[str] = set()
        self._clients_lock = threading.Lock()
        self._http = None
        self.port: int | None = None

    def client_label(self, client_id: str | None) -> str:
        """A safe label value: well-formed ids pass, others are lumped so label count stays bounded."""
        if not client_id:
            return "unknown"
        if not _CLIENT_ID.fullmatch(client_id):
            return "invalid"
        with self._clients_lock:
            if client_id not in self._clients:
                if len(self._clients) >= self.max_clients:
                    return "other"
                self._clients.add(client_id)
        return client_id

    @contextmanager
    def in_flight(self):
        self.inflight.inc()
        try:
            yield
        finally:
            self.inflight.dec()

    def answered(self, client: str, *, images: int, bytes_in: int, bytes_out: int,
                 queue_seconds: float, request_seconds: float, rendered: int = 0, render_seconds: float = 0.0,
                 from_store: int = 0, verify: int = 0) -> None:
        self.requests.labels(client).inc()
        self.images.labels(client).inc(images)
        self.bytes_in.labels(client).inc(bytes_in)
        self.bytes_out.labels(client).inc(bytes_out)
        self.rendered.labels(client).inc(rendered)
        self.render_seconds.labels(client).inc(render_seconds)
        self.store_images.labels(client).inc(from_store)
        self.verify_images.labels(client).inc(verify)
        self.batch.observe(images)
        self.queue.observe(queue_seconds)
        self.request_seconds.observe(request_seconds)

    def forwarded(self, *, images: int, requests: int, forward_seconds: float, busy_seconds: float,
                  failed: bool) -> None:
        """One forward of a gathered batch."""
        self.gathered.observe(images)
        self.gathered_requests.observe(requests)
        if failed:
            self.forward_failures.inc()
        else:
            self.forward.observe(forward_seconds)
        self._busy.add(busy_seconds)

    def failed(self, client: str, code) -> None:
        self.failures.labels(client, code.name).inc()

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start the HTTP endpoint; returns the bound port (``port=0`` picks a free one)."""
        try:
            self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise OSError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
        self.port = self._http.server_port
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
