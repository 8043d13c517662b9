"""Triton's own count of one model's requests, for ``server_stats``.

From Triton's statistics endpoint when it answers (PyTriton restricts it to
holders of an access token: the trainer's ``--token-file``), else from the
Prometheus metrics (``nv_inference_count``) on the metrics port; whichever
answers first is used for the whole run, so the counts of one run never mix
two measures.
"""
from __future__ import annotations

import re
import time
import urllib.request
from typing import Callable

from student_trainer.teachers.errors import one_line
from student_trainer.teachers.types import ServerStats

STATISTICS, METRICS = "triton statistics", "triton metrics"


class NoSeries(LookupError):
    """The metrics endpoint has no series for the model (yet: Triton is loading it)."""


def settled(read: Callable[[], ServerStats], interval: float = 0.05, limit: float = 2.0) -> ServerStats:
    """Read until two reads ``interval`` apart agree (at most ``limit`` seconds).

    Triton counts a request just after its reply has left, so a read right after
    an ``infer`` can miss the last request (seen here about once in 30 tries).
    """
    last = read()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = read()
        if (now.images, now.requests) == (last.images, last.requests):
            return now
        last = now
    return last


class TritonCounts:
    """Reads the count of ``model`` with ``client`` (a ``tritonclient.grpc.InferenceServerClient``) or
    from ``metrics_url``. ``is_away(error)``: whether a failed read means Triton itself is away (then
    raised, for the caller's retry loop), rather than that this source is closed to us."""

    def __init__(self, client, model: str, *, headers: dict | None, metrics_url: str, timeout: float,
                 is_away: Callable[[Exception], bool]):
        self.client, self.model, self.headers = client, model, headers
        self.metrics_url, self.timeout, self.is_away = metrics_url, timeout, is_away
        self.source: str | None = None  # the source that answered first, kept for the run

    def read(self) -> ServerStats:
        sources = {STATISTICS: self._statistics, METRICS: self._metrics}
        if self.source:
            return settled(sources[self.source])
        errors = []
        for name, read in sources.items():
            try:
                read()
            except Exception as e:  # a restricted endpoint, or metrics not reachable
                if name == STATISTICS and self.is_away(e):
                    raise  # Triton itself is away: the retry loop waits for it
                errors.append(f"{name}: {one_line(e)}")
                continue
            self.source = name
            return settled(read)
        raise ConnectionError("cannot read Triton's counts: " + "; ".join(errors))

    def _statistics(self) -> ServerStats:
        stats = self.client.get_inference_statistics(self.model, headers=self.headers, as_json=True,
                                                     client_timeout=self.timeout)
        rows = [m for m in stats.get("model_stats", []) if m.get("name") == self.model]

        def total(key: str, field: str) -> int:
            return sum(int(m.get("inference_stats", {}).get(key, {}).get(field, 0)) for m in rows)

        return ServerStats(images=sum(int(m.get("inference_count", 0)) for m in rows),
                           requests=total("success", "count"), forward_seconds=total("compute_infer", "ns") / 1e9,
                           source="triton statistics (inference_count)")

    def _metrics(self) -> ServerStats:
        with urllib.request.urlopen(self.metrics_url, timeout=self.timeout) as reply:
            text = reply.read().decode()

        def total(metric: str) -> float:
            pattern = re.compile(rf'^{metric}{{[^}}]*model="{re.escape(self.model)}"[^}}]*}}\s+(\S+)$', re.MULTILINE)
            return sum(float(v) for v in pattern.findall(text))

        if f'model="{self.model}"' not in text:
            raise NoSeries(f"no series for model {self.model!r} at {self.metrics_url}")
        return ServerStats(images=int(total("nv_inference_count")),
                           requests=int(total("nv_inference_request_success")),
                           forward_seconds=total("nv_inference_compute_infer_duration_us") / 1e6,
                           source="triton metrics (nv_inference_count)")
