"""Every event the gRPC server counts, recorded once to both of its records.

The Stats RPC reads ``ServerCounters`` (exact, per client id); Prometheus
scrapes ``TeacherMetrics`` (bounded labels, histograms). Each answered request,
failed request and forward is written to both here, so the two never disagree
on what happened and the servicer keeps no bookkeeping of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import grpc

from teacher_server.batcher import BatchDone
from teacher_server.counters import ServerCounters
from teacher_server.metrics import TeacherMetrics, valid_client_id


@dataclass(frozen=True)
class Caller:
    """Who sent a call: its metrics label (bounded) and the id Stats counts it under (None: not apart)."""
    label: str
    counted: str | None


class ServerEvents:
    def __init__(self, counters: ServerCounters, metrics: TeacherMetrics, flops_per_image: float):
        self.counters = counters
        self.metrics = metrics
        self.flops_per_image = flops_per_image

    def caller(self, client_id: str | None) -> Caller:
        return Caller(self.metrics.client_label(client_id), client_id if valid_client_id(client_id) else None)

    def answered(self, caller: Caller, *, images: int, bytes_in: int, bytes_out: int, share_seconds: float,
                 queue_seconds: float, request_seconds: float, rendered: int = 0, render_seconds: float = 0.0,
                 from_store: int = 0, verify: int = 0) -> None:
        """One request answered; ``share_seconds`` is its share of its batch's forward. Of its ``images``,
        ``rendered`` came as view recipes, ``from_store`` were answered from the store (no forward) and
        ``verify`` were re-asks checking a stored answer."""
        extra = dict(rendered=rendered, render_seconds=render_seconds, from_store=from_store, verify=verify)
        self.counters.record(images=images, bytes_in=bytes_in, bytes_out=bytes_out, seconds=share_seconds,
                             flops=(images - from_store) * self.flops_per_image, client=caller.counted, **extra)
        self.metrics.answered(caller.label, images=images, bytes_in=bytes_in, bytes_out=bytes_out,
                              queue_seconds=queue_seconds, request_seconds=request_seconds, **extra)

    def failed(self, caller: Caller, code: grpc.StatusCode) -> None:
        """One request refused or failed, with the gRPC status code it got."""
        self.counters.record_failure(caller.counted)
        self.metrics.failed(caller.label, code)

    def forwarded(self, done: BatchDone) -> None:
        """One forward of a gathered batch, succeeded or not."""
        self.counters.record_forward(images=done.images, busy_seconds=done.busy_seconds)
        self.metrics.forwarded(images=done.images, requests=done.requests, forward_seconds=done.forward_seconds,
                               busy_seconds=done.busy_seconds, failed=done.failed)
