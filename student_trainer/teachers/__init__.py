"""Teacher clients by URL scheme: a new kind of teacher is one entry in ``CLIENTS``.

``grpc://HOST:PORT``      our own gRPC teacher service (``grpcs://`` over TLS); replicas:
                          ``grpc://H1:P1,H2:P2`` (requests spread by gRPC's round_robin)
``triton://HOST:PORT/MODEL``  a model on NVIDIA Triton, over its gRPC API (``?metrics_port=N``, default 8002)
``local:PATH``            the checkpoint at PATH, run in this process

Every kind keeps one contract (``base.TeacherClient``): ``submit`` / ``infer``,
and for the remote kinds one deadline-and-retry loop ending in
``TeacherUnavailable``. ``USES`` says which of the trainer's teacher flags each
kind uses; a flag given for a kind that does not use it is an error.
"""
from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit

from student_trainer.teachers.base import (ClientCounters, ServerStats, TeacherClient, TeacherInfo, TeacherRefused,
                                           TeacherUnavailable)
from student_trainer.teachers.options import DEFAULTS, FLAGS, teacher_options

# Which of the trainer's teacher flags (``options.FLAGS``) each kind uses. Triton has no TLS in this
# client (triton:// is plaintext gRPC) and keeps no per-client counts, so --client-id (a label in our
# server's metrics) would do nothing there; its --token-file is Triton's access token for the
# statistics endpoint. An in-process teacher has no connection at all.
USES = {"grpc": {"max_wait", "token_file", "client_id"},
        "grpcs": {"max_wait", "tls_ca", "token_file", "client_id"},
        "triton": {"max_wait", "token_file"},
        "local": set()}


def _grpc(url, *, wire_dtype=DEFAULTS.wire_dtype, timeout=DEFAULTS.timeout,
          connect_timeout=DEFAULTS.connect_timeout, max_wait=DEFAULTS.max_wait, tls_ca=None, token_file=None,
          client_id=None) -> TeacherClient:
    from common.tokens import read_token
    from student_trainer.teachers.grpc_client import GrpcTeacherClient

    parts = urlsplit(url)
    if "@" in parts.netloc:  # the URL is logged and written to summary.json: no secrets in it
        raise ValueError("a teacher URL must not carry a user or token (it is written to summary.json); "
                         "put the token in a file and pass --token-file")
    replicas = parts.netloc.split(",")
    for replica in replicas:
        one = urlsplit(f"{parts.scheme}://{replica}")
        try:
            port = one.port
        except ValueError:
            port = None
        if not one.hostname or not port or parts.path.strip("/") or parts.query:
            raise ValueError(f"teacher URL {url!r} needs a host and a port, like grpc://127.0.0.1:50051 "
                             f"(replicas: grpc://10.0.0.1:50051,10.0.0.2:50051)")
    if len(set(replicas)) != len(replicas):
        raise ValueError(f"teacher URL {url!r} names a replica twice")
    return GrpcTeacherClient(replicas[0] if len(replicas) == 1 else replicas, wire_dtype=wire_dtype, timeout=timeout,
                             connect_timeout=connect_timeout, max_wait=max_wait, tls=parts.scheme == "grpcs",
                             tls_ca=tls_ca, token=read_token(token_file) if token_file else None,
                             client_id=client_id)


def _triton(url, *, wire_dtype=DEFAULTS.wire_dtype, timeout=DEFAULTS.timeout,
            connect_timeout=DEFAULTS.connect_timeout, max_wait=DEFAULTS.max_wait, token_file=None) -> TeacherClient:
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
                               connect_timeout=connect_timeout, metrics_port=metrics_port, max_wait=max_wait,
                               token=read_token(token_file) if token_file else None)


def _local(url, *, device="cpu", **_unused) -> TeacherClient:
    """``local:PATH``, or ``local:PATH?arch=A&num_classes=C&input_shape=C,H,W`` for another project's state dict."""
    from student_trainer.teachers.local import LocalTeacher, parse_local_url

    path, options = parse_local_url(url)
    return LocalTeacher(path, device=device, **options)


CLIENTS: dict[str, Callable[..., TeacherClient]] = {"grpc": _grpc, "grpcs": _grpc, "triton": _triton,
                                                    "local": _local}


def _kind(scheme: str) -> str:
    return "local:" if scheme == "local" else f"{scheme}://"


def connect(url: str, **opts) -> TeacherClient:
    """Open the teacher at ``url``.

    One of ``FLAGS``' options that this kind does not use (``USES``) is an error,
    unless it is None (not given). ``device`` is where this process computes: an
    in-process teacher runs there, a remote one is not told.
    """
    scheme = url.split(":", 1)[0] if ":" in url else ""
    if scheme not in CLIENTS:
        raise ValueError(f"teacher URL {url!r} has no known scheme; use one of "
                         f"{', '.join(_kind(s) if s != 'local' else 'local:PATH' for s in CLIENTS)}")
    opts = {k: v for k, v in opts.items() if v is not None}
    for option in opts:
        if option in FLAGS and option not in USES.get(scheme, FLAGS):
            raise ValueError(f"{FLAGS[option][0]} does not apply to {_kind(scheme)} teachers")
    if scheme != "local":
        opts.pop("device", None)
    return CLIENTS[scheme](url, **opts)


__all__ = ["CLIENTS", "FLAGS", "USES", "ClientCounters", "ServerStats", "TeacherClient", "TeacherInfo",
           "TeacherRefused", "TeacherUnavailable", "connect", "teacher_options"]
