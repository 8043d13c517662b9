"""Teacher clients by URL scheme: a new kind of teacher is one entry in ``CLIENTS``.

``grpc://HOST:PORT``      our own gRPC teacher service (``grpcs://`` over TLS); replicas:
                          ``grpc://H1:P1,H2:P2`` (requests spread by gRPC's round_robin)
``triton://HOST:PORT/MODEL``  a model on NVIDIA Triton, over its gRPC API (``?metrics_port=N``, default 8002)
``local:PATH``            the checkpoint at PATH, run in this process

Every kind keeps one contract (``base.TeacherClient``): ``submit`` / ``infer``,
``describe``, ``server_stats``, and what the trainer may ask of a client
(``takes_recipes``, ``asks_live_teacher``). The remote kinds
(``remote.RemoteTeacherClient``) share chunking, a pool of calls in flight and
one deadline-and-retry loop ending in ``TeacherUnavailable``; an in-process kind
(``in_process.InProcessTeacher``) answers in the caller's thread. Each client
class says in ``uses`` which of the trainer's teacher flags (``FLAGS``) it uses;
a flag given for a kind that does not use it is an error.
"""
from __future__ import annotations

from student_trainer.teachers.base import TeacherClient
from student_trainer.teachers.errors import TeacherRefused, TeacherUnavailable
from student_trainer.teachers.grpc_client import GrpcsTeacherClient, GrpcTeacherClient
from student_trainer.teachers.local import LocalTeacher
from student_trainer.teachers.options import FLAGS, teacher_options
from student_trainer.teachers.triton_client import TritonTeacherClient
from student_trainer.teachers.types import ClientCounters, ServerStats, TeacherInfo

CLIENTS: dict[str, type[TeacherClient]] = {"grpc": GrpcTeacherClient, "grpcs": GrpcsTeacherClient,
                                           "triton": TritonTeacherClient, "local": LocalTeacher}


def _kind(scheme: str) -> str:
    return "local:" if scheme == "local" else f"{scheme}://"


def connect(url: str, **opts) -> TeacherClient:
    """Open the teacher at ``url``.

    One of ``FLAGS``' options that this kind does not use (its client's ``uses``)
    is an error, unless it is None (not given). ``device`` is where this process
    computes: an in-process teacher runs there, a remote one is not told.
    """
    scheme = url.split(":", 1)[0] if ":" in url else ""
    if scheme not in CLIENTS:
        raise ValueError(f"teacher URL {url!r} has no known scheme; use one of "
                         f"{', '.join(_kind(s) if s != 'local' else 'local:PATH' for s in CLIENTS)}")
    client = CLIENTS[scheme]
    opts = {k: v for k, v in opts.items() if v is not None}
    for option in opts:
        if option in FLAGS and option not in client.uses:
            raise ValueError(f"{FLAGS[option]} does not apply to {_kind(scheme)} teachers")
    return client.from_url(url, **opts)


__all__ = ["CLIENTS", "FLAGS", "ClientCounters", "ServerStats", "TeacherClient", "TeacherInfo", "TeacherRefused",
           "TeacherUnavailable", "connect", "teacher_options"]
