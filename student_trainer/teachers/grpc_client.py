"""The client of our own gRPC teacher service (``grpc://HOST:PORT``, ``grpcs://`` over TLS).

A teacher that goes away is waited for, not fatal (the retry loop of
``base.TeacherClient``): every call has a deadline, and ``UNAVAILABLE`` /
``DEADLINE_EXCEEDED`` are retried with exponential backoff and jitter until
``max_wait`` seconds have passed since the call began; then
``TeacherUnavailable``. Infer is idempotent and a retry resends the same
request (same ``request_id``), so when the teacher comes back the training step
that was waiting gets its answer and goes on: no step is skipped or trained
without the teacher. Up to ``max_in_flight`` calls share the channel at once.

Replicas (``grpc://h1:p1,h2:p2``) share one channel whose requests gRPC's own
``round_robin`` policy spreads over the replicas that are up; a replica that
dies fails its calls in flight with ``UNAVAILABLE``, which the retry loop sends
again, and round_robin gives them to the others. The server counts are read
from each replica on its own channel and added up.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
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
from student_trainer.teachers.options import DEFAULTS

log = logging.getLogger("student_trainer.teacher")

CLIENT_ID_HEADER = "x-client-id"
__all__ = ["CLIENT_ID_HEADER", "RETRYABLE", "GrpcTeacherClient", "RetryPolicy", "TeacherUnavailable"]


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def replica_target(replicas: list[str]) -> str:
    """One gRPC target naming every replica (``ipv4:A:P,B:Q``): gRPC's static address list."""
    resolved = []
    for replica in replicas:
        host, port = replica.rsplit(":", 1)
        try:
            infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError) as e:
            raise ValueError(f"teacher replica {replica!r}: cannot resolve it ({e})") from None
        resolved.append(infos[0][:1] + infos[0][4][:1] + (int(port),))
    families = {family for family, _, _ in resolved}
    if families == {socket.AF_INET}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for _, ip, port in resolved)
    if families == {socket.AF_INET6}:
        return "ipv6:" + ",".join(f"[{ip}]:{port}" for _, ip, port in resolved)
    raise ValueError(f"teacher replicas {', '.join(replicas)} mix IPv4 and IPv6 addresses: use one family")


class GrpcTeacherClient(TeacherClient):
    max_in_flight = 4

    def __init__(self, address: str | list[str], *, wire_dtype: str = DEFAULTS.wire_dtype,
                 timeout: float = DEFAULTS.timeout, connect_timeout: float = DEFAULTS.connect_timeout,
                 max_wait: float = DEFAULTS.max_wait, tls: bool = False,
                 tls_ca: str | None = None, token: str | None = None, client_id: str | None = None,
                 retry: RetryPolicy | None = None):
        super().__init__(retry or RetryPolicy(max_wait=max_wait))
        if timeout <= 0 or connect_timeout <= 0 or max_wait < 0:
            raise ValueError("teacher timeouts must be > 0 seconds and --teacher-max-wait >= 0")
        self.replicas = [address] if isinstance(address, str) else list(address)
        self.address = ",".join(self.replicas)
        self.url = f"{'grpcs' if tls else 'grpc'}://{self.address}"  # never carries the token
        self.wire_dtype = codec.dtype_code(wire_dtype)
        self.timeout = timeout
        self.client_id = client_id or uuid.uuid4().hex
        self._metadata = ((CLIENT_ID_HEADER, self.client_id),)
        if token:
            self._metadata += (("authorization", f"Bearer {token}"),)
            if not tls and not all(_is_loopback(r.rsplit(":", 1)[0]) for r in self.replicas):
                log.warning("sending the teacher token without TLS to %s: use grpcs:// off this machine",
                            self.address)
        # Replies can carry feature maps: let the server's own limit be the only one. Reconnect
        # attempts stay frequent, so a restarted teacher is found within seconds.
        # round_robin: a DNS name with several addresses, or a list of replicas, gets every call
        # spread over the addresses that are up (pick_first, gRPC's default, would use one).
        self._options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
                         ("grpc.initial_reconnect_backoff_ms", int(self.retry.initial_backoff * 1000)),
                         ("grpc.min_reconnect_backoff_ms", int(self.retry.initial_backoff * 1000)),
                         ("grpc.max_reconnect_backoff_ms", int(self.retry.max_backoff * 1000)),
                         ("grpc.lb_policy_name", "round_robin")]
        if tls_ca and not tls:
            raise ValueError("--tls-ca does not apply to grpc:// teachers (only to grpcs://)")
        self._credentials = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes() if tls_ca else None) \
            if tls else None  # no CA file: the system's root certificates
        if len(self.replicas) == 1:
            self.channel = self._channel(self.address)
        else:
            # Under TLS every replica must hold a certificate for the first replica's host name.
            name = [("grpc.ssl_target_name_override", self.replicas[0].rsplit(":", 1)[0].strip("[]"))] if tls \
                else []
            self.channel = self._channel(replica_target(self.replicas), name)
        self._replica_channels: dict[str, grpc.Channel] = {}  # for each replica's Stats
        try:
            grpc.channel_ready_future(self.channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            self.channel.close()
            raise TeacherUnavailable(f"no teacher answered at {self.url} within {connect_timeout:g} s "
                                     f"(is `python -m teacher_server` running there"
                                     f"{', with TLS' if tls else ''}?)") from None
        self.stub = pb_grpc.TeacherStub(self.channel)
        self._last_stats: tuple[float, float] | None = None  # (monotonic time, server uptime)

    def _channel(self, target: str, extra: list | None = None) -> grpc.Channel:
        options = self._options + (extra or [])
        if self._credentials is not None:
            return grpc.secure_channel(target, self._credentials, options=options)
        return grpc.insecure_channel(target, options=options)

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
        one teacher each see their own; a server that does not count per client gives its totals.
        With replicas, each one's counts (on its own channel) and their sums; a replica that cannot be
        read leaves the sums unknown (None) and says which one in ``source``."""
        if len(self.replicas) > 1:
            return self._replica_stats()
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

    def _replica_stats(self) -> ServerStats:
        counts: dict[str, dict | None] = {}
        missing = []
        for replica in self.replicas:
            if replica not in self._replica_channels:
                self._replica_channels[replica] = self._channel(replica)
            try:
                s = pb_grpc.TeacherStub(self._replica_channels[replica]).Stats(
                    pb.StatsRequest(client_id=self.client_id), timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                counts[replica] = None
                missing.append(f"{replica} ({e.code().name})")
                continue
            counts[replica] = {"images": s.images, "requests": s.requests, "bytes_in": s.bytes_in,
                               "bytes_out": s.bytes_out}
        if missing:
            return ServerStats(images=None, requests=None, bytes_in=None, bytes_out=None, forward_seconds=None,
                               source=f"unavailable: replica {', '.join(missing)} could not be read",
                               replicas=counts, per_client=True)
        total = {k: sum(c[k] for c in counts.values()) for k in ("images", "requests", "bytes_in", "bytes_out")}
        return ServerStats(**total, forward_seconds=None, per_client=True,
                           source=f"grpc Stats (this client's) summed over {len(counts)} replicas", replicas=counts)

    def close(self) -> None:
        super().close()
        self.channel.close()
        for channel in self._replica_channels.values():
            channel.close()
