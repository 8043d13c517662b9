"""The Teacher gRPC service: checks each request, runs the model, counts what it served."""
from __future__ import annotations

import logging
import math

import grpc
import torch

from common import codec
from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc
from teacher_server.counters import ServerCounters
from teacher_server.model_runner import TeacherModel

log = logging.getLogger("teacher_server")


class BadRequest(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class TeacherServicer(pb_grpc.TeacherServicer):
    def __init__(self, teacher: TeacherModel, *, max_batch: int, max_message_bytes: int,
                 check_finite: bool = True, counters: ServerCounters | None = None):
        self.teacher = teacher
        self.max_batch = max_batch
        self.max_message_bytes = max_message_bytes
        self.check_finite = check_finite
        self.counters = counters or ServerCounters()
        self.outputs = ["logits", *teacher.feature_names]

    def validate(self, request: pb.InferRequest) -> tuple[torch.Tensor, list[str], int]:
        """Decode and check a request; BadRequest says what was expected and what came."""
        if not request.HasField("images"):
            raise BadRequest(grpc.StatusCode.INVALID_ARGUMENT, "request has no images tensor")
        img = request.images
        if img.dtype not in codec.ITEMSIZE:
            raise BadRequest(grpc.StatusCode.INVALID_ARGUMENT,
                             f"images: unknown dtype code {img.dtype}; expected one of {sorted(codec.WIRE_DTYPES)}")
        want = (*self.teacher.input_shape,)
        if len(img.shape) != 4 or tuple(img.shape[1:]) != want:
            raise BadRequest(grpc.StatusCode.INVALID_ARGUMENT,
                             f"images must have shape [N, {', '.join(map(str, want))}], got {list(img.shape)}")
        n = img.shape[0]
        if n < 1:
            raise BadRequest(grpc.StatusCode.INVALID_ARGUMENT, f"batch must hold at least 1 image, got {n}")
        if n > self.max_batch:
            raise BadRequest(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"batch of {n} images is over this server's max batch {self.max_batch}")
        outputs = list(request.outputs) or ["logits"]
        unknown = [o for o in outputs if o not in self.outputs]
        if unknown or len(set(outputs)) != len(outputs):
            raise BadRequest(grpc.StatusCode.INVALID_ARGUMENT,
                             f"outputs must be distinct names from {self.outputs}, got {outputs}")
        out_dtype = request.output_dtype or img.dtype
        if out_dtype not in codec.ITEMSIZE:
            raise BadRequest(grpc.StatusCode.INVALID_ARGUMENT,
                             f"unknown output dtype code {out_dtype}; expected one of {sorted(codec.WIRE_DTYPES)}")
        try:
            images = codec.decode(img)
        except codec.CodecError as e:
            raise BadRequest(grpc.StatusCode.INVALID_ARGUMENT, f"images: {e}") from None
        if self.check_finite and images.is_floating_point() and not torch.isfinite(images).all():
            raise BadRequest(grpc.StatusCode.INVALID_ARGUMENT, "images hold NaN or infinite values")
        return images, outputs, out_dtype

    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        try:
            images, outputs, out_dtype = self.validate(request)
        except BadRequest as e:
            self.counters.record_failure()
            context.abort(e.code, e.args[0])
        try:
            result, seconds = self.teacher.forward(images, outputs)
        except Exception:
            self.counters.record_failure()
            log.exception("model error on request %r", request.request_id)
            context.abort(grpc.StatusCode.INTERNAL, f"model error on request {request.request_id!r}")
        response = pb.InferResponse(request_id=request.request_id, compute_seconds=seconds)
        for name, tensor in result.items():
            response.outputs[name].CopyFrom(codec.encode(tensor, out_dtype))
        n = images.shape[0]
        self.counters.record(images=n, bytes_in=request.ByteSize(), bytes_out=response.ByteSize(),
                             seconds=seconds, flops=n * self.teacher.flops_per_image)
        return response

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
