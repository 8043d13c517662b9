"""The Teacher gRPC service: checks each request, runs the model, counts what it served.

Every Infer is checked before it reaches the model; a bad one gets
INVALID_ARGUMENT (RESOURCE_EXHAUSTED for a batch over the limit) with a message
saying what was expected and what came, and a model error gets INTERNAL with
the request id logged. Neither stops the server.
"""
from __future__ import annotations

import logging
import math
import threading
import time

import grpc
import torch

from common import codec
from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc
from teacher_server.counters import ServerCounters
from teacher_server.metrics import CLIENT_ID_HEADER, TeacherMetrics
from teacher_server.model_runner import TeacherModel

log = logging.getLogger("teacher_server")

MAX_REQUEST_ID = 128


class BadRequest(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _short(value, limit: int = 120) -> str:
    """``repr``-like text of client-sent values, cut so an error message stays one short line."""
    text = str(list(value)) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(value)} items)"


def _invalid(message: str) -> BadRequest:
    return BadRequest(grpc.StatusCode.INVALID_ARGUMENT, message)


def _metadata(context: grpc.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else None
    return None


class TeacherServicer(pb_grpc.TeacherServicer):
    def __init__(self, teacher: TeacherModel, *, max_batch: int, max_message_bytes: int,
                 check_finite: bool = True, counters: ServerCounters | None = None,
                 metrics: TeacherMetrics | None = None):
        self.teacher = teacher
        self.max_batch = max_batch
        self.max_message_bytes = max_message_bytes
        self.check_finite = check_finite
        self.counters = counters or ServerCounters()
        self.metrics = metrics or TeacherMetrics(max_batch=max_batch, device=teacher.device)
        self.outputs = ["logits", *teacher.feature_names]
        # One forward at a time; queue time is measured up to acquiring this lock.
        self._model_lock = threading.Lock()

    def validate(self, request: pb.InferRequest) -> tuple[torch.Tensor, list[str], int]:
        """Decode and check a request; BadRequest says what was expected and what came."""
        if len(request.request_id) > MAX_REQUEST_ID:
            raise _invalid(f"request_id must be at most {MAX_REQUEST_ID} characters, "
                           f"got {len(request.request_id)}")
        if not request.HasField("images"):
            raise _invalid("request has no images tensor")
        img = request.images
        if img.dtype not in codec.ITEMSIZE:
            raise _invalid(f"images: unknown dtype code {img.dtype}; expected one of "
                           f"{ {name: code for name, code in codec.WIRE_DTYPES.items()} }")
        want = (*self.teacher.input_shape,)
        if len(img.shape) != 4 or tuple(img.shape[1:]) != want:
            raise _invalid(f"images must have shape [N, {', '.join(map(str, want))}], got {_short(img.shape)}")
        n = img.shape[0]
        if n < 1:
            raise _invalid(f"batch must hold at least 1 image, got {n}")
        if n > self.max_batch:
            raise BadRequest(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"batch of {n} images is over this server's max batch {self.max_batch}")
        outputs = list(request.outputs) or ["logits"]
        unknown = [o for o in outputs if o not in self.outputs]
        if unknown or len(set(outputs)) != len(outputs):
            raise _invalid(f"outputs must be distinct names from {self.outputs}, got {_short(outputs)}")
        out_dtype = request.output_dtype or img.dtype
        if out_dtype not in codec.ITEMSIZE:
            raise _invalid(f"unknown output dtype code {out_dtype}; expected one of {sorted(codec.WIRE_DTYPES)}")
        try:
            images = codec.decode(img)  # checks byte length == shape x itemsize
        except codec.CodecError as e:
            raise _invalid(f"images: {e}") from None
        if self.check_finite and images.is_floating_point() and not torch.isfinite(images).all():
            raise _invalid("images hold NaN or infinite values (all values must be finite)")
        return images, outputs, out_dtype

    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        arrived = time.perf_counter()
        client = self.metrics.client_label(_metadata(context, CLIENT_ID_HEADER))
        with self.metrics.in_flight():
            try:
                images, outputs, out_dtype = self.validate(request)
            except BadRequest as e:
                self._failed(client, e.code)
                context.abort(e.code, e.args[0])
            try:
                with self._model_lock:
                    queued = time.perf_counter() - arrived
                    result, seconds = self.teacher.forward(images, outputs)
                response = pb.InferResponse(request_id=request.request_id, compute_seconds=seconds)
                for name, tensor in result.items():
                    response.outputs[name].CopyFrom(codec.encode(tensor, out_dtype))
            except Exception:
                self._failed(client, grpc.StatusCode.INTERNAL)
                log.exception("model error on request %r", request.request_id)
                context.abort(grpc.StatusCode.INTERNAL, f"model error on request {request.request_id!r} "
                                                        "(the server log has the traceback)")
            if not context.is_active():  # deadline passed or client gone: the reply goes nowhere
                self._failed(client, grpc.StatusCode.CANCELLED)
                log.warning("request %r: the caller left before the reply (deadline or cancel); "
                            "not counted as served", request.request_id)
                context.abort(grpc.StatusCode.CANCELLED, "the caller left before the reply")
            n = images.shape[0]
            bytes_in, bytes_out = request.ByteSize(), response.ByteSize()
            self.counters.record(images=n, bytes_in=bytes_in, bytes_out=bytes_out,
                                 seconds=seconds, flops=n * self.teacher.flops_per_image)
            self.metrics.answered(client, images=n, bytes_in=bytes_in, bytes_out=bytes_out,
                                  forward_seconds=seconds, queue_seconds=queued,
                                  request_seconds=time.perf_counter() - arrived)
            return response

    def _failed(self, client: str, code: grpc.StatusCode) -> None:
        self.counters.record_failure()
        self.metrics.failed(client, code)

    def Describe(self, request, context) -> pb.DescribeResponse:
        t = self.teacher
        return pb.DescribeResponse(
            model_name=t.name, arch=t.arch, input_shape=list(t.input_shape), num_classes=t.num_classes,
            feature_names=t.feature_names, flops_per_image=t.flops_per_image,
            max_batch_size=self.max_batch, max_message_bytes=self.max_message_bytes,
            device=str(t.device), compute_dtype=str(t.compute_dtype).removeprefix("torch."))

    def Stats(self, request, context) -> pb.StatsResponse:
        return pb.StatsResponse(**self.counters.snapshot())


def max_message_bytes(teacher: TeacherModel, max_batch: int) -> int:
    """The largest request or reply at max batch: float32 images in, every output out."""
    per_image_in = math.prod(teacher.input_shape) * 4
    probe = torch.zeros(1, *teacher.input_shape)
    result, _ = teacher.forward(probe, ["logits", *teacher.feature_names])
    per_image_out = sum(t[0].numel() for t in result.values()) * 4
    return max(per_image_in, per_image_out) * max_batch + (1 << 20)
