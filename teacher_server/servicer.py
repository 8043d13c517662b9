"""The Teacher gRPC service: checks each request, batches it with others, counts what it served.

Every Infer is checked before it is queued (``teacher_server.checks``); a bad
one gets INVALID_ARGUMENT (RESOURCE_EXHAUSTED for a batch over the max batch,
or one whose reply would pass the message limit) with a message saying what
was expected and what came, and never joins a batch. A request may carry view
recipes instead of images: checked against the data set the server holds and
rendered here, once the answer store, where there is one, has answered the
rows it keeps (``teacher_server.recipe_answers``). Good
requests go to the dynamic batcher (``teacher_server.batcher``), which runs
concurrent requests as one forward; a model error fails the requests of that
batch with INTERNAL, with their request ids logged. Neither stops the server.
"""
from __future__ import annotations

import logging
import math
import time
from functools import partial

import grpc
import torch

from common import codec, reductions
from common.message_budget import GRPC_MESSAGE_CEILING, message_bytes
from common.teacher_model import TeacherModel
from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc
from teacher_server import recipes
from teacher_server.answers import StoredAnswers
from teacher_server.batcher import Answer, Batcher, BatcherClosed, Cancelled, ModelError
from teacher_server.checks import BadRequest, Checked, RequestChecks, short
from teacher_server.counters import ServerCounters, TooManyClients
from teacher_server.events import ServerEvents
from teacher_server.metrics import CLIENT_ID_HEADER, CLIENT_ID_RULE, TeacherMetrics, valid_client_id
from teacher_server.recipe_answers import answer_views

log = logging.getLogger("teacher_server")


def _metadata(context: grpc.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else None
    return None


class TeacherServicer(pb_grpc.TeacherServicer):
    def __init__(self, teacher: TeacherModel, *, max_batch: int, max_message_bytes: int,
                 check_finite: bool = True, counters: ServerCounters | None = None,
                 metrics: TeacherMetrics | None = None, queue_delay_us: int = 100,
                 data: recipes.ServedData | None = None, answers: StoredAnswers | None = None):
        """``data``: the training split view recipes are rendered from (None: images only); ``answers``:
        where answers to recipes are kept and looked up (None: every row is forwarded)."""
        if answers is not None and data is None:
            raise ValueError("an answer store keeps answers to view recipes: give the server a data set too")
        self.teacher = teacher
        self.data = data
        self.answers = answers
        self.max_batch = max_batch
        self.max_message_bytes = max_message_bytes
        self.check_finite = check_finite
        self.checks = RequestChecks(teacher, max_batch=max_batch, max_message_bytes=max_message_bytes, data=data,
                                    check_finite=check_finite)
        self.counters = counters or ServerCounters()
        self.metrics = metrics or TeacherMetrics(max_batch=max_batch, device=teacher.device)
        self.events = ServerEvents(self.counters, self.metrics, teacher.flops_per_image)
        # One worker thread runs every forward (the only caller of teacher.forward here), on batches of up
        # to max_batch images gathered from concurrent requests.
        self.batcher = Batcher(teacher.forward, max_batch=max_batch, queue_delay=queue_delay_us / 1e6,
                               on_batch=self.events.forwarded)

    def close(self, timeout: float | None = None) -> None:
        """Stop the batcher: the running batch finishes, requests still queued fail (UNAVAILABLE)."""
        self.batcher.close(timeout)

    def _serve(self, request: pb.InferRequest, job: Checked, context) -> tuple[Answer, int, float]:
        """(the answer, rows answered from the store, seconds rendering); raises BadRequest."""
        forward = partial(self._answer, request, outputs=job.outputs, context=context)
        if job.views is None:
            return forward(job.images), 0, 0.0
        return answer_views(job, self.data, self.answers, forward)

    def _answer(self, request: pb.InferRequest, images: torch.Tensor, outputs: list[str],
                context: grpc.ServicerContext) -> Answer:
        """Queue the request and wait for its batch; errors become the call's status (raises BadRequest)."""
        try:
            future = self.batcher.submit(images, outputs, alive=context.is_active, tag=request.request_id)
            return future.result()
        except BatcherClosed:
            raise BadRequest(grpc.StatusCode.UNAVAILABLE, "the server is shutting down") from None
        except Cancelled:
            log.warning("request %r: the caller left while it was queued (deadline or cancel); not run",
                        request.request_id)
            raise BadRequest(grpc.StatusCode.CANCELLED, "the caller left before the request ran") from None
        except ModelError as e:  # the batcher logged the traceback once for the whole batch
            log.error("model error on request %r: %s", request.request_id, e)
            raise BadRequest(grpc.StatusCode.INTERNAL, f"model error on request {request.request_id!r} "
                                                       "(the server log has the traceback)") from None

    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        arrived = time.perf_counter()
        caller = self.events.caller(_metadata(context, CLIENT_ID_HEADER))
        with self.metrics.in_flight():
            try:
                job = self.checks.check(request)
                checked = time.perf_counter()
                answer, from_store, render_seconds = self._serve(request, job, context)
            except BadRequest as e:
                self.events.failed(caller, e.code)
                context.abort(e.code, e.args[0])
            try:
                response = pb.InferResponse(request_id=request.request_id, compute_seconds=answer.forward_seconds)
                for name, tensor in answer.outputs.items():
                    response.outputs[name].CopyFrom(codec.encode_output(name, tensor, job.out_dtype))
            except Exception:
                self.events.failed(caller, grpc.StatusCode.INTERNAL)
                log.exception("error encoding the reply to request %r", request.request_id)
                context.abort(grpc.StatusCode.INTERNAL, f"model error on request {request.request_id!r} "
                                                        "(the server log has the traceback)")
            if not context.is_active():  # deadline passed or client gone: the reply goes nowhere
                self.events.failed(caller, grpc.StatusCode.CANCELLED)
                log.warning("request %r: the caller left before the reply (deadline or cancel); "
                            "not counted as served", request.request_id)
                context.abort(grpc.StatusCode.CANCELLED, "the caller left before the reply")
            n = job.rows
            self.events.answered(caller, images=n, bytes_in=request.ByteSize(),
                                 bytes_out=response.ByteSize(), share_seconds=answer.share_seconds,
                                 queue_seconds=checked - arrived + answer.queue_seconds,
                                 request_seconds=time.perf_counter() - arrived,
                                 rendered=0 if job.views is None else n - from_store,
                                 render_seconds=render_seconds, from_store=from_store,
                                 verify=n if request.verify else 0)
            return response

    def Describe(self, request, context) -> pb.DescribeResponse:
        t = self.teacher
        return pb.DescribeResponse(
            model_name=t.name, arch=t.arch, input_shape=list(t.input_shape), num_classes=t.num_classes,
            feature_names=t.feature_names, flops_per_image=t.flops_per_image,
            max_batch_size=self.max_batch, max_message_bytes=self.max_message_bytes,
            device=str(t.device), compute_dtype=str(t.compute_dtype).removeprefix("torch."),
            outputs=[pb.OutputInfo(name=n, shape=list(shape)) for n, shape in t.output_shapes.items()],
            reductions=reductions.served(), dataset=t.dataset or "",
            weights_sha256=t.weights_sha256, data=self.data.info() if self.data else None)

    def Manifest(self, request: pb.ManifestRequest, context) -> pb.ManifestResponse:
        """A range of the served folder's content manifest, so a trainer whose copy differs can name the file."""
        if self.data is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "this teacher holds no data set (start it with --dataset)")
        if request.start < 0 or request.count < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"a manifest range needs start and count >= 0, got "
                          f"{request.start} and {request.count}")
        try:
            return self.data.manifest_range(request.start, request.count)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    def Stats(self, request: pb.StatsRequest, context) -> pb.StatsResponse:
        client = request.client_id or None
        if client is not None:
            if not valid_client_id(client):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"client_id must be {CLIENT_ID_RULE}, got {short(client[:80])}")
            try:
                self.counters.track(client)  # counted apart from now on, if it is not yet
            except TooManyClients as e:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        response = pb.StatsResponse(**self.counters.snapshot(client), client_id=client or "")
        if request.per_client:
            response.clients.extend(pb.ClientStats(client_id=name, **counts)
                                    for name, counts in sorted(self.counters.clients().items()))
        return response


def needed_message_bytes(teacher: TeacherModel, max_batch: int) -> int:
    """The largest request or reply at max batch: float32 images in, every key out (each output in full
    and each reduction of it, as one request may ask for all), plus room for the framing."""
    per_image_in = math.prod(teacher.input_shape) * 4
    per_image_out = sum(math.prod(shape) for shape in teacher.output_keys.values()) * 4
    return message_bytes(max(per_image_in, per_image_out), max_batch)


def max_message_bytes(teacher: TeacherModel, max_batch: int) -> int:
    """``needed_message_bytes``, within gRPC's ceiling: at 224 px every full feature map of a max batch
    can exceed 2 GiB (such a request is refused, saying how many images fit; logits and reduced features fit)."""
    return min(needed_message_bytes(teacher, max_batch), GRPC_MESSAGE_CEILING)
