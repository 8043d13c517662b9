"""The client of our own gRPC teacher service (``grpc://HOST:PORT``, ``grpcs://`` over TLS).

A teacher that goes away is waited for, not fatal (the retry loop of
``base.TeacherClient``): every call has a deadline, and ``UNAVAILABLE`` /
``DEADLINE_EXCEEDED`` are retried with exponential backoff and jitter until
``max_wait`` seconds have passed since the call began; then
``TeacherUnavailable``. Infer is idempotent and a retry resends the same
request (same ``request_id``), so when the teacher comes back the training step
that was waiting gets its answer and goes on: no step is skipped or trained
without the teacher. Up to ``max_in_flight`` calls share the channel at once.
"""
from __future__ import annotations

import ipaddress
import logging
import time
import uuid
from functools import cached_property
from pathlib import Path

import grpc
import torch

from common import codec
from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc
from student_trainer.teachers.base import (RETRYABLE, RetryPolicy, ServerStats, TeacherClient, TeacherInfo,
                                           TeacherUnavailable)

log = logging.getLogger("student_trainer.teacher")

CLIENT_ID_HEADER = "x-client-id"
__all__ = ["CLIENT_ID_HEADER", "RETRYABLE", "GrpcTeacherClient", "RetryPolicy", "TeacherUnavailable"]


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class GrpcTeacherClient(TeacherClient):
    max_in_flight = 4

    def __init__(self, address: str, *, wire_dtype: str = "float16", timeout: float = 60.0,
                 connect_timeout: float = 30.0, max_wait: float = 600.0, tls: bool = False,
                 tls_ca: str | None = None, token: str | None = None, client_id: str | None = None,
                 retry: RetryPolicy | None = None):
        super().__init__(retry or RetryPolicy(max_wait=max_wait))
        if timeout <= 0 or connect_timeout <= 0 or max_wait < 0:
            raise ValueError("teacher timeouts must be > 0 seconds and --teacher-max-wait >= 0")
        self.address = address
        self.url = f"{'grpcs' if tls else 'grpc'}://{address}"  # never carries the token
        self.wire_dtype = codec.dtype_code(wire_dtype)
        self.timeout = timeout
        self.client_id = client_id or uuid.uuid4().hex
        self._metadata = ((CLIENT_ID_HEADER, self.client_id),)
        if token:
            self._metadata += (("authorization", f"Bearer {token}"),)
            if not tls and not _is_loopback(address.rsplit(":", 1)[0]):
                log.warning("sending the teacher token without TLS to %s: use grpcs:// off this machine",
                            address)
        # Replies can carry feature maps: let the server's own limit be the only one. Reconnect
        # attempts stay frequent, so a restarted teacher is found within seconds.
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
                   ("grpc.initial_reconnect_backoff_ms", int(self.retry.initial_backoff * 1000)),
                   ("grpc.min_reconnect_backoff_ms", int(self.retry.initial_backoff * 1000)),
                   ("grpc.max_reconnect_backoff_ms", int(self.retry.max_backoff * 1000))]
        if tls:
            ca = Path(tls_ca).read_bytes() if tls_ca else None  # None: the system's root certificates
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca), options=options)
        else:
            if tls_ca:
                raise ValueError("--tls-ca does not apply to grpc:// teachers (only to grpcs://)")
            self.channel = grpc.insecure_channel(address, options=options)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            self.channel.close()
            raise TeacherUnavailable(f"no teacher answered at {self.url} within {connect_timeout:g} s "
                                     f"(is `python -m teacher_server` running there"
                                     f"{', with TLS' if tls else ''}?)") from None
        self.stub = pb_grpc.TeacherStub(self.channel)
        self._last_stats: tuple[float, float] | None = None  # (monotonic time, server uptime)

    def _call(self, rpc: str, request):
        """One RPC with a deadline, retried by the base's loop while the teacher is away."""
        method = getattr(self.stub, rpc)
        return self._retrying(rpc, lambda: method(request, timeout=self.timeout, metadata=self._metadata))

    @cached_property
    def info(self) -> TeacherInfo:
        d = self._call("Describe", pb.DescribeRequest())
        return TeacherInfo(d.model_name, d.arch, tuple(d.input_shape), d.num_classes,
                           list(d.feature_names), d.flops_per_image, d.max_batch_size,
                           output_shapes={o.name: tuple(o.shape) for o in d.outputs},
                           reductions=list(d.reductions))

    def describe(self) -> TeacherInfo:
        return self.info

    def _infer(self, images: torch.Tensor, outputs: list[str]):
        request = pb.InferRequest(images=codec.encode(images, self.wire_dtype), outputs=outputs,
                                  request_id=uuid.uuid4().hex, output_dtype=pb.FLOAT32)
        response = self._call("Infer", request)  # a retry resends this very request (same request_id)
        result = {o: codec.decode(response.outputs[o]).float() for o in outputs}
        return result, request.ByteSize(), response.ByteSize()

    def server_stats(self) -> ServerStats:
        """The server's counts of this client's own calls (its x-client-id), so that two trainers sharing
        one teacher each see their own; a server that does not count per client gives its totals."""
        s = self._call("Stats", pb.StatsRequest(client_id=self.client_id))
        now = time.monotonic()
        per_client = s.client_id == self.client_id
        source = ("grpc Stats (this client's)" if per_client
                  else "grpc Stats (server-wide: this server does not count per client)")
        if self._last_stats is not None:
            then, uptime_then = self._last_stats
            if s.uptime_seconds + 1.0 < uptime_then + (now - then):
                source += " (the server restarted since the previous Stats: its counts cover its current life)"
                log.warning("teacher at %s restarted during the run; its Stats cover only its current life",
                            self.url)
        self._last_stats = (now, s.uptime_seconds)
        return ServerStats(images=s.images, requests=s.requests, bytes_in=s.bytes_in, bytes_out=s.bytes_out,
                           forward_seconds=s.forward_seconds, source=source, per_client=per_client)

    def close(self) -> None:
        super().close()
        self.channel.close()
