"""A gRPC server holding the Teacher service and the standard health service.

Life of a server: the model is loaded and has run a probe forward before the
port opens; health goes NOT_SERVING -> SERVING once it is listening, and back
to NOT_SERVING when ``drain`` starts (SIGTERM in the CLI): new calls are
refused, calls in flight get ``grace`` seconds to finish.

Concurrent Infer calls are gathered into one forward by the servicer's dynamic
batcher (``--max-batch`` images at most, waiting at most ``--queue-delay-us``
for more); ``server.stop`` stops it once the gRPC server has stopped.
"""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common.answer_store import AnswerStore
from common.message_budget import FRAMING_BYTES, images_that_fit
from common.net import is_loopback
from common.teacher_model import TeacherModel
from teacher_server.answers import StoredAnswers
from teacher_server.auth import BearerTokenInterceptor
from teacher_server.handlers import SERVICE_NAME, add_teacher_service
from teacher_server.malformed import MalformedLog
from teacher_server.metrics import TeacherMetrics
from teacher_server.recipes import ServedData, load_data
from teacher_server.servicer import TeacherServicer, max_message_bytes, needed_message_bytes

log = logging.getLogger("teacher_server")


def build_server(teacher: TeacherModel, *, host: str = "127.0.0.1", port: int = 50051,
                 max_batch: int = 256, workers: int = 8, check_finite: bool = True,
                 token: str | None = None, tls: grpc.ServerCredentials | None = None,
                 metrics_port: int | None = None, metrics_host: str = "127.0.0.1", queue_delay_us: int = 100,
                 data: ServedData | None = None, answer_store: AnswerStore | None = None):
    """Return ``(server, servicer, bound_port)``; the server is started and SERVING.

    ``port=0`` binds a free port, which is what tests want. ``token`` makes every
    Teacher call need ``authorization: Bearer TOKEN``; ``tls`` serves over TLS;
    ``metrics_port`` (0 = any free port) serves Prometheus metrics over HTTP.
    ``max_batch`` bounds a request and a gathered batch; ``queue_delay_us`` is the
    longest a queued request waits for others to join its batch (0: none).
    At most ``workers`` calls are handled (so can be gathered) at once.
    ``data``: the training split view recipes are rendered from (None: images only); ``answer_store``:
    where answers to recipes are kept, and given again with no forward (the caller closes it).
    """
    if queue_delay_us < 0:
        raise ValueError(f"--queue-delay-us must be >= 0, got {queue_delay_us}")
    limit, needed = max_message_bytes(teacher, max_batch), needed_message_bytes(teacher, max_batch)
    if needed > limit:
        log.warning("a reply with every output of %d images would be %.1f GB, over gRPC's 2 GiB a message: "
                    "a request whose reply would not fit is refused, saying how many images do (%d with every "
                    "output); the trainer's clients split their batches to fit", max_batch, needed / 1e9,
                    images_that_fit(limit, (needed - FRAMING_BYTES) // max_batch))
    # so_reuseport off: a second server on a busy port must fail, not silently share it.
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
               ("grpc.so_reuseport", 0)]
    interceptors = [BearerTokenInterceptor(token)] if token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options,
                         interceptors=interceptors)
    metrics = TeacherMetrics(max_batch=max_batch, device=teacher.device,
                             model={"model": teacher.name, "arch": teacher.arch, "device": str(teacher.device),
                                    "compute_dtype": str(teacher.compute_dtype).removeprefix("torch.")})
    servicer = TeacherServicer(teacher, max_batch=max_batch, max_message_bytes=limit,
                               check_finite=check_finite, metrics=metrics, queue_delay_us=queue_delay_us,
                               data=data, answers=StoredAnswers(answer_store, teacher.weights_sha256,
                                                                data.views.fingerprint, teacher.num_classes)
                               if answer_store else None)
    malformed = MalformedLog(metrics.malformed)  # requests that do not parse: INVALID_ARGUMENT, a line now and then
    add_teacher_service(server, servicer, malformed)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    address = f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, tls) if tls else server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot bind {address} (in use, or not an address of this machine)")
    missing = [what for what, given in (("a token", token), ("TLS", tls)) if not given]
    if missing and not is_loopback(host):
        log.warning("listening on %s without %s: whoever reaches this address can use the teacher",
                    host, " or ".join(missing))
    if metrics_port is not None:
        metrics.serve(metrics_host, metrics_port)
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server.health = health_servicer
    server.metrics = metrics
    server.stop = _stopping_the_batcher_too(server.stop, servicer, malformed)
    return server, servicer, bound


def _stopping_the_batcher_too(grpc_stop, servicer: TeacherServicer, malformed: MalformedLog):
    """``server.stop(grace)`` that also stops the batcher once the gRPC server has stopped (calls in
    flight answered within ``grace``), and logs the malformed requests not logged yet; the event it
    returns is set when all that is done."""

    def stop(grace):
        grpc_done = grpc_stop(grace)
        done = threading.Event()

        def finish():
            grpc_done.wait()
            servicer.close()  # anything still queued fails (its call is gone anyway); the running batch ends
            malformed.close()
            done.set()

        threading.Thread(target=finish, name="teacher-stop", daemon=True).start()
        return done

    return stop


def drain(server: grpc.Server, servicer: TeacherServicer, grace: float) -> dict:
    """Stop taking calls, let those in flight finish within ``grace`` seconds; return the final counters."""
    server.health.enter_graceful_shutdown()  # NOT_SERVING, and it stays so
    server.stop(grace=grace).wait()  # the batcher too, once the calls have finished
    server.metrics.close()
    return {**servicer.counters.snapshot(), "clients": servicer.counters.clients()}


def _write_atomically(path: str | Path, text: str) -> None:
    """A reader polling ``path`` never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_stats(path: str | Path, counters: dict) -> None:
    """The final counters as JSON."""
    _write_atomically(path, json.dumps(counters, indent=2) + "\n")


def served_data(teacher: TeacherModel, args) -> ServedData | None:
    """``--dataset``'s training split, built as the trainer builds it (None: not asked for)."""
    if not args.dataset:
        return None
    data = load_data(args.dataset, args.data_root, input_shape=teacher.input_shape, num_classes=teacher.num_classes,
                     train_size=args.train_size, seed=args.data_seed, augment=not args.no_augment,
                     mean=args.mean, std=args.std)
    data.views.fingerprint  # computed once, now, not in the first Describe
    return data


def serve_grpc(teacher: TeacherModel, args) -> None:
    """The CLI's gRPC serving life: bind, report, serve until SIGTERM/SIGINT, drain, exit cleanly."""
    from common.answer_store import open_store
    from common.tokens import read_token
    from teacher_server.auth import server_credentials

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("give both --tls-cert and --tls-key, or neither")
    if args.grace < 0:
        raise ValueError(f"--grace must be >= 0 seconds, got {args.grace}")
    token = read_token(args.token_file) if args.token_file else None
    # Filled by the first SIGTERM/SIGINT; installed before the port opens. A plain list, not an Event: a
    # handler that takes a lock can deadlock with the main thread holding it when the signal lands.
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    tls = server_credentials(args.tls_cert, args.tls_key) if args.tls_cert else None
    data = served_data(teacher, args)
    if args.recipe_store and data is None:
        raise ValueError("--recipe-store keeps answers to view recipes: give --dataset too")
    store = open_store(args.recipe_store) if args.recipe_store else None
    server, servicer, port = build_server(
        teacher, host=args.host, port=args.port, max_batch=args.max_batch, workers=args.workers,
        check_finite=not args.allow_nonfinite, token=token, tls=tls,
        metrics_port=args.metrics_port, metrics_host=args.metrics_host, queue_delay_us=args.queue_delay_us,
        data=data, answer_store=store)
    if data is not None:
        log.info("rendering view recipes from %s: %d training images, fingerprint %s%s", data.name,
                 len(data.views), data.views.fingerprint[:12],
                 f"; answers to them kept in {store.describe()}" if store else "")
    log.info("serving %s (%s, input %s, %d classes, %.3g MFLOPs/image) on %s:%d, batches up to %d images "
             "gathered within %d us%s%s%s",
             teacher.name, teacher.arch, "x".join(map(str, teacher.input_shape)), teacher.num_classes,
             teacher.flops_per_image / 1e6, args.host, port, args.max_batch, args.queue_delay_us,
             " with TLS" if tls else "",
             ", token required" if token else "",
             f"; metrics on http://{args.metrics_host}:{server.metrics.port}/metrics"
             if server.metrics.port else "")
    if args.port_file:
        _write_atomically(args.port_file, f"{port}\n")
    # Poll, never block: a signal the kernel hands to another thread (gRPC's, the batcher's) runs its Python
    # handler only when the main thread next runs bytecode, which a blocking wait would put off for ever.
    while not stop:
        time.sleep(0.2)
    log.info("draining: no new calls; up to %g s for calls in flight", args.grace)
    final = drain(server, servicer, args.grace)
    if store is not None:
        store.close()
    log.info("stopped; final counters %s", json.dumps(final, sort_keys=True))
    if args.stats_file:
        write_stats(args.stats_file, final)
