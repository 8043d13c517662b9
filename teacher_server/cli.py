"""python -m teacher_server: serve a teacher checkpoint (or a random teacher) over gRPC."""
from __future__ import annotations

import argparse
import logging
import signal
import threading

from common.cli_errors import one_line_errors, parse_shape

log = logging.getLogger("teacher_server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m teacher_server", description=__doc__)
    src = p.add_argument_group("teacher")
    src.add_argument("--checkpoint", help="a checkpoint written by the student trainer (--method ce)")
    src.add_argument("--arch", help="serve a randomly initialised ARCH instead (smoke tests)")
    src.add_argument("--num-classes", type=int, default=10)
    src.add_argument("--input-shape", type=parse_shape, default=(3, 32, 32), metavar="C,H,W")
    src.add_argument("--seed", type=int, default=0)
    run = p.add_argument_group("serving")
    run.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    run.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    run.add_argument("--half", action="store_true", help="float16 compute (CUDA only)")
    run.add_argument("--max-batch", type=int, default=256)
    run.add_argument("--workers", type=int, default=8, help="gRPC worker threads")
    run.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/inf pixels")
    run.add_argument("--port-file", help="write the bound port here once serving (for scripts)")
    run.add_argument("--log-level", default="INFO")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with one_line_errors("teacher_server"):
        if bool(args.checkpoint) == bool(args.arch):
            raise ValueError("give exactly one of --checkpoint PATH or --arch NAME")
        if args.max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {args.max_batch}")
        from teacher_server.model_runner import load_teacher
        from teacher_server.server import build_server

        teacher = load_teacher(args.checkpoint, arch=args.arch, num_classes=args.num_classes,
                               input_shape=args.input_shape, seed=args.seed,
                               device=args.device, half=args.half)
        server, _, port = build_server(teacher, host=args.host, port=args.port, max_batch=args.max_batch,
                                       workers=args.workers, check_finite=not args.allow_nonfinite)
    log.info("serving %s (%s, input %s, %d classes, %.3g MFLOPs/image) on %s:%d",
             teacher.name, teacher.arch, "x".join(map(str, teacher.input_shape)), teacher.num_classes,
             teacher.flops_per_image / 1e6, args.host, port)
    if args.port_file:
        with open(args.port_file, "w") as f:
            f.write(f"{port}\n")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    server.health.enter_graceful_shutdown()
    server.stop(grace=5).wait()
