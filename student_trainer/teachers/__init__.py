"""Teacher clients by URL scheme: a new kind of teacher is one entry in ``CLIENTS``.

``grpc://HOST:PORT``      our own gRPC teacher service (``grpcs://`` over TLS)
``triton://HOST:PORT/MODEL``  a model on NVIDIA Triton, over its gRPC API (``?metrics_port=N``, default 8002)
``local:PATH``            the checkpoint at PATH, run in this process
"""
from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit

from student_trainer.teachers.base import ClientCounters, ServerStats, TeacherClient, TeacherInfo, TeacherUnavailable


def _grpc(url, *, wire_dtype="float16", timeout=60.0, connect_timeout=30.0, max_wait=600.0, tls_ca=None,
          token_file=None, client_id=None, **_unused) -> TeacherClient:
    from common.tokens import read_token
    from student_trainer.teachers.grpc_client import GrpcTeacherClient

    parts = urlsplit(url)
    if "@" in parts.netloc:  # the URL is logged and written to summary.json: no secrets in it
        raise ValueError("a teacher URL must not carry a user or token (it is written to summary.json); "
                         "put the token in a file and pass --token-file")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or not port:
        raise ValueError(f"teacher URL {url!r} needs a host and a port, like grpc://127.0.0.1:50051")
    return GrpcTeacherClient(parts.netloc, wire_dtype=wire_dtype, timeout=timeout,
                             connect_timeout=connect_timeout, max_wait=max_wait, tls=parts.scheme == "grpcs",
                             tls_ca=tls_ca, token=read_token(token_file) if token_file else None,
                             client_id=client_id)


def _triton(url, *, wire_dtype="float16", timeout=60.0, connect_timeout=30.0, token_file=None,
            **_unused) -> TeacherClient:
    """``token_file``: Triton's access token, which its statistics endpoint asks for (else metrics are read)."""
    from urllib.parse import parse_qs

    from common.tokens import read_token
    from student_trainer.teachers.triton_client import TritonTeacherClient

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    try:
        port = parts.port
        metrics_port = int(query.pop("metrics_port", ["8002"])[-1])
    except ValueError:
        port = metrics_port = None
    model = parts.path.strip("/")
    if "@" in parts.netloc or not parts.hostname or not port or not metrics_port or not model or "/" in model \
            or query:
        raise ValueError(f"teacher URL {url!r} should look like triton://127.0.0.1:8001/teacher "
                         "(optionally ?metrics_port=8002)")
    return TritonTeacherClient(parts.netloc, model, wire_dtype=wire_dtype, timeout=timeout,
                               connect_timeout=connect_timeout, metrics_port=metrics_port,
                               token=read_token(token_file) if token_file else None)


def _local(url, *, device="cpu", **_unused) -> TeacherClient:
    from student_trainer.teachers.local import LocalTeacher

    path = url.split(":", 1)[1]
    return LocalTeacher(path, device=device)


CLIENTS: dict[str, Callable[..., TeacherClient]] = {"grpc": _grpc, "grpcs": _grpc, "triton": _triton,
                                                    "local": _local}


def teacher_options(args) -> dict:
    """The trainer's teacher-connection flags (retry budget, TLS, token, client id) as ``connect`` options."""
    return {"max_wait": getattr(args, "teacher_max_wait", 600.0), "tls_ca": getattr(args, "tls_ca", None),
            "token_file": getattr(args, "token_file", None), "client_id": getattr(args, "client_id", None)}


def connect(url: str, **opts) -> TeacherClient:
    """Open the teacher at ``url``; options a client kind does not use are ignored."""
    scheme = url.split(":", 1)[0] if ":" in url else ""
    if scheme not in CLIENTS:
        raise ValueError(f"teacher URL {url!r} has no known scheme; use one of "
                         f"{', '.join(s + '://' if s != 'local' else 'local:PATH' for s in CLIENTS)}")
    return CLIENTS[scheme](url, **opts)


__all__ = ["CLIENTS", "ClientCounters", "ServerStats", "TeacherClient", "TeacherInfo", "connect",
           "teacher_options"]
