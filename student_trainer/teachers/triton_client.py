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
(default 8002); whichever answers first is used for the whole run.
"""
from __future__ import annotations

import re
import time
import urllib.request
import uuid
from functools import cached_property

import grpc
import numpy as np
import torch

from student_trainer.teachers.base import ServerStats, TeacherClient, TeacherInfo, TeacherUnavailable

TOKEN_HEADER = "triton-grpc-protocol-triton-access-token"
WIRE = {"TYPE_FP16": ("FP16", np.float16, "float16"), "TYPE_FP32": ("FP32", np.float32, "float32")}




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


class TritonTeacherClient(TeacherClient):
    def __init__(self, address: str, model: str, *, wire_dtype: str = "float16", timeout: float = 60.0,
                 connect_timeout: float = 30.0, token: str | None = None, metrics_port: int = 8002):
        import tritonclient.grpc as tc
        from tritonclient.grpc import service_pb2_grpc

        super().__init__()
        self.address, self.model, self.timeout = address, model, timeout
        self.host = address.rsplit(":", 1)[0]
        self.metrics_url = f"http://{self.host}:{metrics_port}/metrics"
        self.headers = {TOKEN_HEADER: token} if token else None
        self.client = tc.InferenceServerClient(address)
        self._wait_ready(connect_timeout)
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self.channel = grpc.insecure_channel(address, options=options)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self._stats_source: str | None = None
        if self.wire_name != wire_dtype:
            self.close()
            raise ValueError(f"the Triton teacher {model!r} takes {self.wire_name} images; use "
                             f"--wire-dtype {self.wire_name} (or serve it with --input-dtype {wire_dtype})")

    def _wait_ready(self, connect_timeout: float) -> None:
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + connect_timeout
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
                                         f"{connect_timeout:g} s: {last}")
            time.sleep(0.25)

    @cached_property
    def config(self) -> dict:
        return self.client.get_model_config(self.model, as_json=True)["config"]

    @cached_property
    def version(self) -> str:
        versions = self.client.get_model_metadata(self.model).versions
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

    @cached_property
    def info(self) -> TeacherInfo:
        params = {k: v.get("string_value", "") for k, v in self.config.get("parameters", {}).items()}
        if "logits" not in self._outputs:
            raise ValueError(f"Triton model {self.model!r} has no 'logits' output (outputs: {list(self._outputs)})")
        if not self.config.get("max_batch_size"):
            raise ValueError(f"Triton model {self.model!r} does not batch (max_batch_size 0); a teacher must")
        return TeacherInfo(
            model_name=params.get("teacher_name") or self.model,
            arch=params.get("arch", "unknown"),
            input_shape=tuple(int(d) for d in self._input["dims"]),
            num_classes=int(self._output_dims["logits"][-1]),
            feature_names=[n for n in self._outputs if n != "logits"],
            flops_per_image=float(params.get("flops_per_image", 0.0)),
            max_batch_size=int(self.config["max_batch_size"]))

    def describe(self) -> TeacherInfo:
        return self.info

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
        response = self.stub.ModelInfer(request, timeout=self.timeout)
        result = InferResult(response)
        # as_numpy views the reply's buffer (read-only); the copy to float32 owns its memory.
        tensors = {o: torch.from_numpy(np.array(result.as_numpy(self._outputs[o]), dtype=np.float32))
                   for o in outputs}
        return tensors, request.ByteSize(), response.ByteSize()

    def server_stats(self) -> ServerStats:
        """Triton's own count for this model; the first source that answers is kept for the run."""
        sources = {"triton statistics": self._statistics, "triton metrics": self._metrics}
        if self._stats_source:
            return settled(sources[self._stats_source])
        errors = []
        for name, read in sources.items():
            try:
                read()
            except Exception as e:  # a restricted endpoint, or metrics not reachable
                errors.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
                continue
            self._stats_source = name
            return settled(read)
        raise ConnectionError("cannot read Triton's counts: " + "; ".join(errors))

    def _statistics(self) -> ServerStats:
        stats = self.client.get_inference_statistics(self.model, headers=self.headers, as_json=True)
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
            raise ValueError(f"no series for model {self.model!r} at {self.metrics_url}")
        return ServerStats(images=int(total("nv_inference_count")),
                           requests=int(total("nv_inference_request_success")),
                           forward_seconds=total("nv_inference_compute_infer_duration_us") / 1e6,
                           source="triton metrics (nv_inference_count)")

    def close(self) -> None:
        if hasattr(self, "channel"):
            self.channel.close()
        self.client.close()
