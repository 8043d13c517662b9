"""The client of our own gRPC teacher service (``grpc://HOST:PORT``)."""
from __future__ import annotations

import uuid
from functools import cached_property

import grpc
import torch

from common import codec
from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc
from student_trainer.teachers.base import ServerStats, TeacherClient, TeacherInfo


class TeacherUnavailable(ConnectionError):
    pass


class GrpcTeacherClient(TeacherClient):
    def __init__(self, address: str, *, wire_dtype: str = "float16", timeout: float = 60.0,
                 connect_timeout: float = 30.0):
        super().__init__()
        self.address = address
        self.wire_dtype = codec.dtype_code(wire_dtype)
        self.timeout = timeout
        # Replies can carry feature maps: let the server's own limit be the only one.
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self.channel = grpc.insecure_channel(address, options=options)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            self.channel.close()
            raise TeacherUnavailable(f"no teacher answered at grpc://{address} within {connect_timeout:g} s "
                                     f"(is `python -m teacher_server` running there?)") from None
        self.stub = pb_grpc.TeacherStub(self.channel)

    @cached_property
    def info(self) -> TeacherInfo:
        d = self.stub.Describe(pb.DescribeRequest(), timeout=self.timeout)
        return TeacherInfo(d.model_name, d.arch, tuple(d.input_shape), d.num_classes,
                           list(d.feature_names), d.flops_per_image, d.max_batch_size)

    def describe(self) -> TeacherInfo:
        return self.info

    def _infer(self, images: torch.Tensor, outputs: list[str]):
        request = pb.InferRequest(images=codec.encode(images, self.wire_dtype), outputs=outputs,
                                  request_id=uuid.uuid4().hex, output_dtype=pb.FLOAT32)
        response = self.stub.Infer(request, timeout=self.timeout)
        result = {o: codec.decode(response.outputs[o]).float() for o in outputs}
        return result, request.ByteSize(), response.ByteSize()

    def server_stats(self) -> ServerStats:
        s = self.stub.Stats(pb.StatsRequest(), timeout=self.timeout)
        return ServerStats(images=s.images, requests=s.requests, bytes_in=s.bytes_in, bytes_out=s.bytes_out,
                           forward_seconds=s.forward_seconds, source="grpc Stats")

    def close(self) -> None:
        self.channel.close()
