"""The Teacher service's handler table: the generated one's, with each request parsed by our own code.

``protos.teacher_pb2_grpc.add_TeacherServicer_to_server`` parses with
``FromString``, whose errors grpcio logs with a traceback and answers INTERNAL
before the servicer sees the call. Here each method parses with
``malformed.tolerant`` and its servicer method is wrapped by
``malformed.refusing_malformed``, so bytes that do not parse are answered
INVALID_ARGUMENT, counted, and logged in a rate-limited line. The table is read
from the proto's service descriptor, so a new RPC cannot be left out.
"""
from __future__ import annotations

import grpc

from protos import teacher_pb2 as pb
from teacher_server.malformed import MalformedLog, refusing_malformed, tolerant

SERVICE = pb.DESCRIPTOR.services_by_name["Teacher"]
SERVICE_NAME = SERVICE.full_name  # unixkd.teacher.v1.Teacher


def add_teacher_service(server: grpc.Server, servicer, malformed: MalformedLog) -> None:
    """Register ``servicer``'s RPCs on ``server``, as the generated code does (generic and registered)."""
    handlers = {}
    for method in SERVICE.methods:
        if method.client_streaming or method.server_streaming:
            raise TypeError(f"{SERVICE_NAME}/{method.name} streams; only unary calls are handled here")
        request, response = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            refusing_malformed(method.name, getattr(servicer, method.name), malformed),
            request_deserializer=tolerant(request), response_serializer=response.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
