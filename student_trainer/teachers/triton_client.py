"""The client of a teacher on NVIDIA Triton (``triton://HOST:PORT/MODEL``), over Triton's gRPC API.

Control calls (health, model config and metadata, statistics) go through
``tritonclient.grpc.InferenceServerClient``. Inference builds the
``ModelInferRequest`` from tritonclient's protobufs and sends it on a stub of
tritonclient's gRPC service, so the images travel as one raw binary buffer and
the bytes counted are exactly the serialized request and reply (the same
measure as ``grpc://``); replies are decoded with ``tritonclient.grpc.InferResult``,
a top-k answer (``logits.top10``, UINT8 [4K + 2] a row) rebuilt to the dense
logits as ``grpc://`` gives it (``triton_config.unpack_top_k``); the model
serves a fixed list of K, and another K is a ValueError.
The model's config says what the teacher is (``triton_config``); the server's
count comes from Triton's statistics or its metrics (``triton_counts``).
Neither answering does not stop training (``try_server_stats``).

Deadline, retry and ``TeacherUnavailable`` are the remote kinds' (the same
contract as ``grpc://``); what counts as "Triton is away" is in ``_classify``:
gRPC ``UNAVAILABLE`` / ``DEADLINE_EXCEEDED`` (but not a restricted endpoint,
which Triton also answers with ``UNAVAILABLE``), a model Triton does not know or
has no version of (Triton restarting or reloading it: the model was ready when
the client connected), and a metrics endpoint that refuses the connection. A
restarted Triton's counts start again from 0: ``server_stats`` then says so in
its ``source``.
"""
from __future__ import annotations

import time
import urllib.error
import uuid
from functools import cached_property
from urllib.parse import parse_qs, urlsplit

import grpc
import numpy as np
import torch

from common.reductions import LOGITS
from student_trainer.teachers.errors import TeacherUnavailable, one_line
from student_trainer.teachers.remote import RETRYABLE, Failure, RemoteTeacherClient, has_host_and_port
from student_trainer.teachers.triton_config import WIRE, ModelConfig, unpack_top_k
from student_trainer.teachers.triton_counts import NoSeries, TritonCounts
from student_trainer.teachers.types import ServerStats, TeacherInfo

TOKEN_HEADER = "triton-grpc-protocol-triton-access-token"
METRICS_PORT = 8002  # Triton's own default


def triton_failure(error: Exception) -> Failure | None:
    """What an error from a call to Triton means (``RemoteTeacherClient._classify``)."""
    from tritonclient.utils import InferenceServerException

    if isinstance(error, InferenceServerException):
        status = error.status() or ""
        code = getattr(grpc.StatusCode, status.rsplit(".", 1)[-1], None) if status else None
        details = error.message() or str(error)
    elif isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)):
        code, details = error.code(), error.details() or ""
    elif isinstance(error, (NoSeries, ConnectionRefusedError, ConnectionResetError, TimeoutError)) or (
            isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError)):
        return Failure(True, None, one_line(error))
    else:
        return None
    restricted = "restricted" in details  # PyTriton's token-protected endpoints answer UNAVAILABLE
    reloading = code == grpc.StatusCode.NOT_FOUND and "unknown model" in details
    return Failure((code in RETRYABLE and not restricted) or reloading, code, details)


class TritonTeacherClient(RemoteTeacherClient):
    """``triton://HOST:PORT/MODEL[?metrics_port=N]``. Triton has no TLS in this client (triton:// is
    plaintext gRPC) and keeps no per-client counts, so --client-id (a label in our server's metrics)
    would do nothing here; ``--token-file`` is Triton's access token, which its statistics endpoint
    asks for (else the metrics are read)."""
    uses = frozenset({"max_wait", "token_file"})

    @classmethod
    def parse_url(cls, url: str) -> dict:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        try:
            metrics_port = int(query.pop("metrics_port", [str(METRICS_PORT)])[-1])
        except ValueError:
            metrics_port = None
        model = parts.path.strip("/")
        if "@" in parts.netloc or not has_host_and_port(parts) or not metrics_port or not model or "/" in model \
                or query:
            raise ValueError(f"teacher URL {url!r} should look like triton://127.0.0.1:8001/teacher "
                             f"(optionally ?metrics_port={METRICS_PORT})")
        return {"address": parts.netloc, "model": model, "metrics_port": metrics_port}

    def __init__(self, address: str, model: str, *, token: str | None = None, metrics_port: int = METRICS_PORT,
                 **remote):
        """``remote``: the wire dtype, timeouts and retry budget (``RemoteTeacherClient``)."""
        import tritonclient.grpc as tc
        from tritonclient.grpc import service_pb2_grpc

        super().__init__(**remote)
        self.address, self.model = address, model
        self.url = f"triton://{address}/{model}"
        self.client = tc.InferenceServerClient(address)
        self._wait_ready()
        self.channel = grpc.insecure_channel(address, options=self.channel_options())
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.stats_reader = TritonCounts(self.client, model, headers={TOKEN_HEADER: token} if token else None,
                                   metrics_url=f"http://{address.rsplit(':', 1)[0]}:{metrics_port}/metrics",
                                   timeout=self.timeout, is_away=self._is_away)
        self._stats_seen: tuple[int, int] | None = None  # (retries, images) at the previous read
        self._outage = False  # Triton was unreachable between two reads of its counts
        if self.model_config.wire_name != self.wire_dtype:
            self.close()
            wire = self.model_config.wire_name
            raise ValueError(f"the Triton teacher {model!r} takes {wire} images; use "
                             f"--wire-dtype {wire} (or serve it with --input-dtype {self.wire_dtype})")

    def _wait_ready(self) -> None:
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + self.connect_timeout
        last = "no answer"
        while True:
            try:
                if self.client.is_server_live() and self.client.is_model_ready(self.model):
                    return
                last = f"the server answers but model {self.model!r} is not ready (or not there)"
            except InferenceServerException as e:
                last = (e.message() or str(e)).splitlines()[0]
            if time.monotonic() >= deadline:
                self.client.close()
                raise TeacherUnavailable(f"no Triton teacher ready at triton://{self.address}/{self.model} within "
                                         f"{self.connect_timeout:g} s: {last}")
            time.sleep(0.25)

    def _classify(self, error: Exception) -> Failure | None:
        return triton_failure(error)

    def _is_away(self, error: Exception) -> bool:
        failure = self._classify(error)
        return failure is not None and failure.retryable

    @cached_property
    def model_config(self) -> ModelConfig:
        return ModelConfig(self.model, self._retrying("get_model_config", lambda: self.client.get_model_config(
            self.model, as_json=True, client_timeout=self.timeout))["config"])

    @cached_property
    def version(self) -> str:
        versions = self._retrying("get_model_metadata", lambda: self.client.get_model_metadata(
            self.model, client_timeout=self.timeout)).versions
        return max(versions, key=int) if versions else ""

    def _describe(self) -> TeacherInfo:
        return self.model_config.info()

    def submit(self, images: torch.Tensor, outputs=(LOGITS,), views=None, verify: bool = False):
        """``RemoteTeacherClient.submit``; a top-k K the model does not serve is a ValueError here, at once."""
        self.model_config.check_top_k(list(outputs))
        return super().submit(images, outputs, views, verify)

    def _infer(self, images: torch.Tensor, outputs: list[str], verify: bool = False):
        """(Triton's request has no field for ``verify``: this client counts such images apart, the server cannot.)"""
        from tritonclient.grpc import InferResult, service_pb2

        config = self.model_config
        config.check_top_k(outputs)
        unknown = [o for o in outputs if o not in config.outputs]
        if unknown:
            raise ValueError(f"Triton model {self.model!r} has no output(s) {unknown}; it has {list(config.outputs)}")
        datatype, np_dtype, _ = WIRE[config.input["data_type"]]
        array = images.detach().cpu().numpy().astype(np_dtype, copy=False)
        request = service_pb2.ModelInferRequest(model_name=self.model, model_version=self.version,
                                                id=uuid.uuid4().hex)
        request.inputs.add(name=config.input["name"], datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
        for o in outputs:
            request.outputs.add(name=config.outputs[o])
        # A retry resends this very request (same id).
        response = self._retrying("ModelInfer", lambda: self.stub.ModelInfer(request, timeout=self.timeout))
        result = InferResult(response)
        # as_numpy views the reply's buffer (read-only); the copy to float32 owns its memory.
        classes = config.output_dims[LOGITS][-1] if LOGITS in config.output_dims else None
        tensors = {o: unpack_top_k(result.as_numpy(config.outputs[o]), config.top_k[o], classes)
                   if o in config.top_k else
                   torch.from_numpy(np.array(result.as_numpy(config.outputs[o]), dtype=np.float32))
                   for o in outputs}
        return tensors, request.ByteSize(), response.ByteSize()

    def _counts(self) -> tuple[ServerStats, str | None]:
        """Triton's own count for this model; the first source that answers is kept for the run."""
        stats = self._retrying("statistics", self.stats_reader.read)
        if self._stats_seen is not None and (self.retries > self._stats_seen[0] or stats.images < self._stats_seen[1]):
            self._outage = True
        self._stats_seen = (self.retries, stats.images)
        return stats, ("Triton was unreachable during the run: if it restarted, its counts cover only its current "
                       "life") if self._outage else None

    def close(self) -> None:
        super().close()
        if hasattr(self, "channel"):
            self.channel.close()
        self.client.close()
