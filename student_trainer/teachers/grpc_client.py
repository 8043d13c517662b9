"""The client of our own gRPC teacher service (``grpc://HOST:PORT``, ``grpcs://`` over TLS).

A teacher that goes away is waited for, not fatal (the retry loop of
``remote.RemoteTeacherClient``): every call has a deadline, and ``UNAVAILABLE`` /
``DEADLINE_EXCEEDED`` are retried with exponential backoff and jitter until
``max_wait`` seconds have passed since the call began; then
``TeacherUnavailable``. Infer is idempotent and a retry resends the same
request (same ``request_id``), so when the teacher comes back the training step
that was waiting gets its answer and goes on: no step is skipped or trained
without the teacher. Up to ``max_in_flight`` calls share the channel at once.

Replicas (``grpc://h1:p1,h2:p2``, ``grpc_replicas``) share one channel whose
requests gRPC's own ``round_robin`` policy spreads over the replicas that are
up; a replica that dies fails its calls in flight with ``UNAVAILABLE``, which
the retry loop sends again, and round_robin gives them to the others. The
server counts are read from each replica on its own channel and added up.
"""
from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import torch

from common import codec
from common.net import is_loopback
from common.views import Views
from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc
from student_trainer.teachers.errors import TeacherUnavailable
from student_trainer.teachers.grpc_replicas import replica_target, summed_stats
from student_trainer.teachers.options import DEFAULTS, SENDS
from student_trainer.teachers.remote import RemoteTeacherClient, has_host_and_port
from student_trainer.teachers.types import ServedDataSet, ServedManifest, ServerStats, TeacherInfo

log = logging.getLogger("student_trainer.teacher")

CLIENT_ID_HEADER = "x-client-id"


def teacher_info(d: pb.DescribeResponse) -> TeacherInfo:
    """What a Describe reply says, as the contract's ``TeacherInfo``."""
    return TeacherInfo(d.model_name, d.arch, tuple(d.input_shape), d.num_classes,
                       list(d.feature_names), d.flops_per_image, d.max_batch_size,
                       output_shapes={o.name: tuple(o.shape) for o in d.outputs},
                       reductions=list(d.reductions), dataset=d.dataset or None,
                       weights_sha256=d.weights_sha256 or None,
                       data=ServedDataSet(d.data.name, d.data.size, d.data.fingerprint, d.data.files_fingerprint,
                                          d.data.view_settings)
                       if d.HasField("data") else None, max_message_bytes=d.max_message_bytes or None)


class GrpcTeacherClient(RemoteTeacherClient):
    """``grpc://HOST:PORT``, or replicas ``grpc://H1:P1,H2:P2``: plaintext gRPC."""
    scheme = "grpc"
    tls = False
    uses = frozenset({"max_wait", "token_file", "client_id", "send"})

    @classmethod
    def parse_url(cls, url: str) -> dict:
        parts = urlsplit(url)
        if "@" in parts.netloc:  # the URL is logged and written to summary.json: no secrets in it
            raise ValueError("a teacher URL must not carry a user or token (it is written to summary.json); "
                             "put the token in a file and pass --token-file")
        replicas = parts.netloc.split(",")
        for replica in replicas:
            if not has_host_and_port(urlsplit(f"{parts.scheme}://{replica}")) or parts.path.strip("/") \
                    or parts.query:
                raise ValueError(f"teacher URL {url!r} needs a host and a port, like grpc://127.0.0.1:50051 "
                                 f"(replicas: grpc://10.0.0.1:50051,10.0.0.2:50051)")
        if len(set(replicas)) != len(replicas):
            raise ValueError(f"teacher URL {url!r} names a replica twice")
        return {"address": replicas[0] if len(replicas) == 1 else replicas}

    def __init__(self, address: str | list[str], *, tls_ca: str | None = None, token: str | None = None,
                 client_id: str | None = None, send: str = DEFAULTS.send, **remote):
        """``remote``: the wire dtype, timeouts and retry budget (``RemoteTeacherClient``). ``send``
        "recipes": batches that come with view recipes travel as them, rendered by the server."""
        super().__init__(**remote)
        if send not in SENDS:
            raise ValueError(f"--send must be one of {', '.join(SENDS)}, got {send!r}")
        self.takes_recipes = send == "recipes"
        self.replicas = [address] if isinstance(address, str) else list(address)
        self.address = ",".join(self.replicas)
        self.url = f"{self.scheme}://{self.address}"  # never carries the token
        self.wire_code = codec.dtype_code(self.wire_dtype)
        self.client_id = client_id or uuid.uuid4().hex
        self._metadata = ((CLIENT_ID_HEADER, self.client_id),)
        if token:
            self._metadata += (("authorization", f"Bearer {token}"),)
            if not self.tls and not all(is_loopback(r.rsplit(":", 1)[0]) for r in self.replicas):
                log.warning("sending the teacher token without TLS to %s: use grpcs:// off this machine",
                            self.address)
        # round_robin: a DNS name with several addresses, or a list of replicas, gets every call
        # spread over the addresses that are up (pick_first, gRPC's default, would use one).
        self._options = self.channel_options() + [("grpc.lb_policy_name", "round_robin")]
        if tls_ca and not self.tls:
            raise ValueError("--tls-ca does not apply to grpc:// teachers (only to grpcs://)")
        self._credentials = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes() if tls_ca else None) \
            if self.tls else None  # no CA file: the system's root certificates
        if len(self.replicas) == 1:
            self.channel = self._channel(self.address)
        else:
            # Under TLS every replica must hold a certificate for the first replica's host name.
            name = [("grpc.ssl_target_name_override", self.replicas[0].rsplit(":", 1)[0].strip("[]"))] \
                if self.tls else []
            self.channel = self._channel(replica_target(self.replicas), name)
        self._replica_channels: dict[str, grpc.Channel] = {}  # for each replica's Stats
        try:
            grpc.channel_ready_future(self.channel).result(timeout=self.connect_timeout)
        except grpc.FutureTimeoutError:
            self.channel.close()
            raise TeacherUnavailable(f"no teacher answered at {self.url} within {self.connect_timeout:g} s "
                                     f"(is `python -m teacher_server` running there"
                                     f"{', with TLS' if self.tls else ''}?)") from None
        self.stub = pb_grpc.TeacherStub(self.channel)
        self._last_stats: tuple[float, float] | None = None  # (monotonic time, server uptime)

    def _channel(self, target: str, extra: list | None = None) -> grpc.Channel:
        options = self._options + (extra or [])
        if self._credentials is not None:
            return grpc.secure_channel(target, self._credentials, options=options)
        return grpc.insecure_channel(target, options=options)

    def _call(self, rpc: str, request):
        """One RPC with a deadline, retried while the teacher is away (``RemoteTeacherClient._retrying``)."""
        method = getattr(self.stub, rpc)
        return self._retrying(rpc, lambda: method(request, timeout=self.timeout, metadata=self._metadata))

    def _describe(self) -> TeacherInfo:
        return teacher_info(self._call("Describe", pb.DescribeRequest()))

    def served_manifest(self) -> ServedManifest:
        """The served folder's content manifest, a range at a time (``common.manifest.first_difference``)."""
        def ask(start: int, count: int) -> pb.ManifestResponse:
            return self._call("Manifest", pb.ManifestRequest(start=start, count=count))
        return ServedManifest(lambda start, count: (lambda r: (r.range_digest, r.files))(ask(start, count)),
                              lambda index: (lambda r: (r.path, r.size, r.digest))(ask(index, 0)))

    def _infer(self, images: torch.Tensor, outputs: list[str], verify: bool = False):
        return self._send(pb.InferRequest(images=codec.encode(images, self.wire_code), outputs=outputs,
                                          request_id=uuid.uuid4().hex, output_dtype=pb.FLOAT32, verify=verify),
                          outputs)

    def _infer_views(self, views: Views, outputs: list[str], verify: bool = False):
        """The rows as 104-byte recipes, rendered by the server in the wire dtype the pixels would have had."""
        recipes = pb.ViewRecipes(rows=views.as_array().astype("<i8").tobytes(), render_dtype=self.wire_code)
        return self._send(pb.InferRequest(views=recipes, outputs=outputs, request_id=uuid.uuid4().hex,
                                          output_dtype=pb.FLOAT32, verify=verify), outputs)

    def _send(self, request: pb.InferRequest, outputs: list[str]):
        response = self._call("Infer", request)  # a retry resends this very request (same request_id)
        result = {o: codec.decode(response.outputs[o]).float() for o in outputs}
        return result, request.ByteSize(), response.ByteSize()

    def _counts(self) -> tuple[ServerStats, str | None]:
        """The server's counts of this client's own calls (its x-client-id), so that two trainers sharing
        one teacher each see their own; a server that does not count per client gives its totals.
        With replicas, each one's counts (on its own channel) and their sums; a replica that cannot be
        read leaves the sums unknown (None) and says which one in ``source``."""
        if len(self.replicas) > 1:
            return self._replica_stats(), None
        s = self._call("Stats", pb.StatsRequest(client_id=self.client_id))
        now = time.monotonic()
        per_client = s.client_id == self.client_id
        source = ("grpc Stats (this client's)" if per_client
                  else "grpc Stats (server-wide: this server does not count per client)")
        restart = None
        if self._last_stats is not None:
            then, uptime_then = self._last_stats
            if s.uptime_seconds + 1.0 < uptime_then + (now - then):
                restart = "the server restarted since the previous Stats: its counts cover its current life"
                log.warning("teacher at %s restarted during the run; its Stats cover only its current life",
                            self.url)
        self._last_stats = (now, s.uptime_seconds)
        return ServerStats(images=s.images, requests=s.requests, bytes_in=s.bytes_in, bytes_out=s.bytes_out,
                           forward_seconds=s.forward_seconds, source=source, per_client=per_client,
                           verify_images=s.verify_images), restart

    def _replica_stats(self) -> ServerStats:
        return summed_stats(self.replicas, self._replica_stats_call)

    def _replica_stats_call(self, replica: str) -> pb.StatsResponse:
        """One replica's Stats of this client, on the replica's own channel (made at the first read)."""
        if replica not in self._replica_channels:
            self._replica_channels[replica] = self._channel(replica)
        return pb_grpc.TeacherStub(self._replica_channels[replica]).Stats(
            pb.StatsRequest(client_id=self.client_id), timeout=self.timeout, metadata=self._metadata)

    def close(self) -> None:
        super().close()
        self.channel.close()
        for channel in self._replica_channels.values():
            channel.close()


class GrpcsTeacherClient(GrpcTeacherClient):
    """``grpcs://``: the same service over TLS, its certificate checked against ``--tls-ca`` (else the
    system's root certificates)."""
    scheme = "grpcs"
    tls = True
    uses = GrpcTeacherClient.uses | {"tls_ca"}
