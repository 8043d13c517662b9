"""A gRPC server holding the Teacher service and the standard health service."""
from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos import teacher_pb2_grpc as pb_grpc
from teacher_server.model_runner import TeacherModel
from teacher_server.servicer import TeacherServicer, max_message_bytes

SERVICE_NAME = "unixkd.teacher.v1.Teacher"


def build_server(teacher: TeacherModel, *, host: str = "127.0.0.1", port: int = 50051,
                 max_batch: int = 256, workers: int = 8, check_finite: bool = True):
    """Return ``(server, servicer, bound_port)``; the server is started and SERVING.

    ``port=0`` binds a free port, which is what tests want.
    """
    limit = max_message_bytes(teacher, max_batch)
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    servicer = TeacherServicer(teacher, max_batch=max_batch, max_message_bytes=limit,
                               check_finite=check_finite)
    pb_grpc.add_TeacherServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port} (in use, or not an address of this machine)")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server.health = health_servicer
    return server, servicer, bound
