"""The client of a teacher on NVIDIA Triton (``triton://HOST:PORT/MODEL``), over Triton's gRPC API.

Control calls (health, model config and metadata, statistics) go through
``tritonclient.grpc.InferenceServerClient``. Inference builds the
``ModelInferRequest`` from tritonclient's protobufs and sends it on a stub of
tritonclient's gRPC service, so the images travel as one raw binary buffer and
the bytes counted are exactly the serialized request and reply (the same
measure as ``grpc://``); replies are decoded with ``tritonclient.grpc.InferResult``.

Works with ``python -m teacher_server --backend triton`` and with a stock
Triton serving a repository from ``python -m teacher_server.export``:
LibTorch's ``NAME__INDEX`` tensor names are mapped back to ``NAME``.

The server-side count comes from Triton's statistics endpoint when it answers
(PyTriton restricts it to holders of an access token: the trainer's ``--token-file``),
else from the Prometheus metrics (``nv_inference_count``) on ``metrics_port``
(default 8002); whichever answers first is used for the whole run. Neither
answering does not stop training (``try_server_stats``).

Deadline, retry and ``TeacherUnavailable`` are the base's (the same contract as
``grpc://``); what counts as "Triton is away" is in ``_classify``: gRPC
``UNAVAILABLE`` / ``DEADLINE_EXCEEDED`` (but not a restricted endpoint, which
Triton also answers with ``UNAVAILABLE``), a model Triton does not know or has
no version of (Triton restarting or reloading it: the model was ready when the
client connected), and a metrics endpoint that refuses the connection. A
restarted Triton's counts start again from 0: ``server_stats`` then says so in
its ``source``.
"""
from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
import uuid
from functools import cached_property
from urllib.parse import parse_qs, urlsplit

import grpc
import numpy as np
import torch

from common.reductions import NONE as NO_REDUCTION
from common.reductions import parse_key
from student_trainer.teachers.base import RETRYABLE, Failure, ServerStats, TeacherInfo, TeacherUnavailable, one_line
from student_trainer.teachers.remote import RemoteTeacherClient, has_host_and_port

TOKEN_HEADER = "triton-grpc-protocol-triton-access-token"
WIRE = {"TYPE_FP16": ("FP16", np.float16, "float16"), "TYPE_FP32": ("FP32", np.float32, "float32")}
METRICS_PORT = 8002  # Triton's own default


def plain_name(triton_name: str) -> str:
    """'logits__0' (LibTorch's naming convention) -> 'logits'; other names unchanged."""
    return re.sub(r"__\d+$", "", triton_name)


def settled(read, interval: float = 0.05, limit: float = 2.0) -> ServerStats:
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


class NoSeries(LookupError):
    """The metrics endpoint has no series for the model (yet: Triton is loading it)."""


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
        self.host = address.rsplit(":", 1)[0]
        self.metrics_url = f"http://{self.host}:{metrics_port}/metrics"
        self.headers = {TOKEN_HEADER: token} if token else None
        self.client = tc.InferenceServerClient(address)
        self._wait_ready()
        self.channel = grpc.insecure_channel(address, options=self.channel_options())
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self._stats_source: str | None = None
        self._stats_seen: tuple[int, int] | None = None  # (retries, images) at the previous read
        self._outage = False  # Triton was unreachable between two reads of its counts
        if self.wire_name != self.wire_dtype:
            self.close()
            raise ValueError(f"the Triton teacher {model!r} takes {self.wire_name} images; use "
                             f"--wire-dtype {self.wire_name} (or serve it with --input-dtype {self.wire_dtype})")

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

    @cached_property
    def config(self) -> dict:
        return self._retrying("get_model_config", lambda: self.client.get_model_config(
            self.model, as_json=True, client_timeout=self.timeout))["config"]

    @cached_property
    def version(self) -> str:
        versions = self._retrying("get_model_metadata", lambda: self.client.get_model_metadata(
            self.model, client_timeout=self.timeout)).versions
        return max(versions, key=int) if versions else ""

    @property
    def _input(self) -> dict:
        return self.config["input"][0]

    @property
    def wire_name(self) -> str:
        return WIRE.get(self._input["data_type"], (None, None, self._input["data_type"]))[2]

    @cached_property
    def _outputs(self) -> dict[str, str]:
        """Plain output name -> the name Triton knows it by."""
        return {plain_name(o["name"]): o["name"] for o in self.config["output"]}

    @cached_property
    def _output_dims(self) -> dict[str, list[int]]:
        return {plain_name(o["name"]): [int(d) for d in o["dims"]] for o in self.config["output"]}

    def _describe(self) -> TeacherInfo:
        params = {k: v.get("string_value", "") for k, v in self.config.get("parameters", {}).items()}
        if "logits" not in self._outputs:
            raise ValueError(f"Triton model {self.model!r} has no 'logits' output (outputs: {list(self._outputs)})")
        if not self.config.get("max_batch_size"):
            raise ValueError(f"Triton model {self.model!r} does not batch (max_batch_size 0); a teacher must")
        # Outputs named NAME.REDUCTION are NAME reduced on the server (the 'reductions' parameter
        # lists those offered); the others are the full outputs.
        offered = [r for r in params.get("reductions", "").split(",") if r]
        full = {n: tuple(d) for n, d in self._output_dims.items()
                if parse_key(n)[1] == NO_REDUCTION or parse_key(n)[1] not in offered}
        return TeacherInfo(
            model_name=params.get("teacher_name") or self.model,
            arch=params.get("arch", "unknown"),
            input_shape=tuple(int(d) for d in self._input["dims"]),
            num_classes=int(self._output_dims["logits"][-1]),
            feature_names=[n for n in full if n != "logits"],
            flops_per_image=float(params.get("flops_per_image", 0.0)),
            max_batch_size=int(self.config["max_batch_size"]),
            output_shapes=full, reductions=offered, dataset=params.get("dataset") or None,
            weights_sha256=params.get("weights_sha256") or None)

    def _infer(self, images: torch.Tensor, outputs: list[str]):
        from tritonclient.grpc import InferResult, service_pb2

        unknown = [o for o in outputs if o not in self._outputs]
        if unknown:
            raise ValueError(f"Triton model {self.model!r} has no output(s) {unknown}; it has {list(self._outputs)}")
        datatype, np_dtype, _ = WIRE[self._input["data_type"]]
        array = images.detach().cpu().numpy().astype(np_dtype, copy=False)
        request = service_pb2.ModelInferRequest(model_name=self.model, model_version=self.version,
                                                id=uuid.uuid4().hex)
        request.inputs.add(name=self._input["name"], datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
        for o in outputs:
            request.outputs.add(name=self._outputs[o])
        # A retry resends this very request (same id).
        response = self._retrying("ModelInfer", lambda: self.stub.ModelInfer(request, timeout=self.timeout))
        result = InferResult(response)
        # as_numpy views the reply's buffer (read-only); the copy to float32 owns its memory.
        tensors = {o: torch.from_numpy(np.array(result.as_numpy(self._outputs[o]), dtype=np.float32))
                   for o in outputs}
        return tensors, request.ByteSize(), response.ByteSize()

    def _counts(self) -> tuple[ServerStats, str | None]:
        """Triton's own count for this model; the first source that answers is kept for the run."""
        stats = self._retrying("statistics", self._read_stats)
        if self._stats_seen is not None and (self.retries > self._stats_seen[0] or stats.images < self._stats_seen[1]):
            self._outage = True
        self._stats_seen = (self.retries, stats.images)
        return stats, ("Triton was unreachable during the run: if it restarted, its counts cover only its current "
                       "life") if self._outage else None

    def _read_stats(self) -> ServerStats:
        sources = {"triton statistics": self._statistics, "triton metrics": self._metrics}
        if self._stats_source:
            return settled(sources[self._stats_source])
        errors = []
        for name, read in sources.items():
            try:
                read()
            except Exception as e:  # a restricted endpoint, or metrics not reachable
                failure = self._classify(e)
                if name == "triton statistics" and failure is not None and failure.retryable:
                    raise  # Triton itself is away: the retry loop waits for it
                errors.append(f"{name}: {one_line(e)}")
                continue
            self._stats_source = name
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

    def close(self) -> None:
        super().close()
        if hasattr(self, "channel"):
            self.channel.close()
        self.client.close()
