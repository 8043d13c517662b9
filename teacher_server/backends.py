"""Serving backends by name: another way to serve the teacher is one entry in ``BACKENDS``.

Each backend serves a loaded ``TeacherModel`` with the parsed CLI flags until
SIGINT/SIGTERM, then shuts down. Imports are deferred so that ``--help`` and
the gRPC path never load PyTriton.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Backend:
    serve: Callable[..., None]
    default_port: int
    about: str
    renders_recipes: bool = False  # True: it can hold a data set and render view recipes (--dataset)


def _serve_grpc(teacher, args) -> None:
    from teacher_server.server import serve_grpc

    serve_grpc(teacher, args)


def _serve_triton(teacher, args) -> None:
    from teacher_server.triton_backend import serve_triton

    serve_triton(teacher, args)


BACKENDS: dict[str, Backend] = {
    "grpc": Backend(_serve_grpc, 50051, "our own gRPC service (protos/teacher.proto)", renders_recipes=True),
    "triton": Backend(_serve_triton, 8001, "a real NVIDIA Triton server (PyTriton), KServe v2 gRPC/HTTP"),
}


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    """``--backend``, the dynamic-batching flag both backends read, and the flags only Triton reads."""
    p.add_argument("--backend", choices=sorted(BACKENDS), default="grpc",
                   help="; ".join(f"{name}: {b.about}" for name, b in BACKENDS.items()))
    b = p.add_argument_group("dynamic batching (both backends; --max-batch bounds a gathered batch too)")
    b.add_argument("--queue-delay-us", type=int, default=100,
                   help="longest wait (microseconds), from a request's arrival, for more requests to join its "
                        "batch; 0: no waiting, run whatever is queued when the model is free")
    t = p.add_argument_group("Triton (--backend triton; --port is its gRPC port)")
    t.add_argument("--http-port", type=int, default=8000, help="Triton's HTTP port (0: any free port)")
    t.add_argument("--model-name", default="teacher", help="the model's name on Triton")
    t.add_argument("--instances", type=int, default=1, help="model instances, each with its own copy of the model")
    t.add_argument("--input-dtype", choices=("float16", "float32"), default="float16",
                   help="dtype of the 'images' input (clients send exactly this)")
    t.add_argument("--triton-token-file",
                   help="access token for Triton's statistics/repository endpoints: read from this file, "
                        "or generated and written there (mode 600) if the file is missing")
    t.add_argument("--triton-open-endpoints", action="store_true",
                   help="no token on statistics/repository endpoints (for tools that cannot send the token header)")


def serve(teacher, args) -> None:
    """Serve with ``args.backend``; an unset ``--port`` becomes that backend's usual port."""
    backend = BACKENDS[args.backend]
    if args.port is None:
        args.port = backend.default_port
    backend.serve(teacher, args)
