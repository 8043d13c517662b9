"""Teacher clients by URL scheme: a new kind of teacher is one entry in ``CLIENTS``.

``grpc://HOST:PORT``      our own gRPC teacher service
``local:PATH``            the checkpoint at PATH, run in this process
"""
from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit

from student_trainer.teachers.base import ClientCounters, ServerStats, TeacherClient, TeacherInfo


def _grpc(url, *, wire_dtype="float16", timeout=60.0, connect_timeout=30.0, **_unused) -> TeacherClient:
    from student_trainer.teachers.grpc_client import GrpcTeacherClient

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or not port:
        raise ValueError(f"teacher URL {url!r} needs a host and a port, like grpc://127.0.0.1:50051")
    return GrpcTeacherClient(parts.netloc, wire_dtype=wire_dtype, timeout=timeout,
                             connect_timeout=connect_timeout)


def _local(url, *, device="cpu", **_unused) -> TeacherClient:
    from student_trainer.teachers.local import LocalTeacher

    path = url.split(":", 1)[1]
    return LocalTeacher(path, device=device)


CLIENTS: dict[str, Callable[..., TeacherClient]] = {"grpc": _grpc, "local": _local}


def connect(url: str, **opts) -> TeacherClient:
    """Open the teacher at ``url``; options a client kind does not use are ignored."""
    scheme = url.split(":", 1)[0] if ":" in url else ""
    if scheme not in CLIENTS:
        raise ValueError(f"teacher URL {url!r} has no known scheme; use one of "
                         f"{', '.join(s + '://' if s != 'local' else 'local:PATH' for s in CLIENTS)}")
    return CLIENTS[scheme](url, **opts)


__all__ = ["CLIENTS", "ClientCounters", "ServerStats", "TeacherClient", "TeacherInfo", "connect"]
