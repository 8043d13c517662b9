"""The teacher on a real NVIDIA Triton server (``--backend triton``).

PyTriton (the ``nvidia-pytriton`` wheel) ships a ``tritonserver`` binary and
binds a Python callable to a Triton model: Triton does the protocol (gRPC,
HTTP, metrics), dynamic batching and statistics; the callable runs
``TeacherModel.forward`` once per batch Triton forms.

The model ``teacher`` (``--model-name``), version 1, takes ``images``
[-1, C, H, W] in FP16 or FP32 (``--input-dtype``) and returns, FP32, one
output per key the teacher offers (``common.reductions``): ``logits``
[-1, classes], every named feature map in full (``stage3``), and each
reduction of each (``stage3.attention`` [-1, H, W], ``stage3.pool`` [-1, C]),
reduced on the server; Triton computes only the outputs a request names. It
also returns the logits as compact top-k answers (``common.topk``), UINT8:
``logits.topK`` [-1, 4K + 2] for each K of ``TOP_K_SERVED`` up to the class
count (a Triton model's outputs are a fixed list: not any K, as on the gRPC
server), a row an image's K largest logits and the rest (``pack_top_k``). The
teacher's own facts that Triton's model config has no field for (arch, FLOPs
per image, the reductions offered, the K of the top-k answers, the data set it
was trained on) ride in the config's ``parameters`` so a client reads them with
the config. Its ``max_batch_size`` is ``--max-batch``, or fewer images where a
reply with every output of that many would pass Triton's 2 GiB a gRPC message
(224 px feature maps): Triton can refuse a request by its image count only.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import secrets
import socket
import sysconfig
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from common import reductions
from common.message_budget import GRPC_MESSAGE_CEILING, images_that_fit
from common.teacher_model import TeacherModel
from common.topk import TopK, bytes_per_answer
from teacher_server.finite import require_finite
from teacher_server.gather import gather, split

log = logging.getLogger("teacher_server")

INPUT_NAME = "images"
INPUT_DTYPES = {"float16": np.float16, "float32": np.float32}
MODEL_VERSION = 1
# The K of the top-k answers (``logits.topK``) the Triton model offers, those up to the class count.
TOP_K_SERVED = (1, 2, 3, 5, 10, 20, 50, 100)


@dataclasses.dataclass
class TritonOptions:
    """How to run Triton; the defaults are Triton's own ports, on loopback."""
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    model_name: str = "teacher"
    max_batch: int = 256
    queue_delay_us: int = 100
    instances: int = 1
    input_dtype: str = "float16"
    access_token: str | None = None     # for the statistics/repository endpoints; None: generated
    restrict_endpoints: bool = True     # False opens statistics etc. to anyone who reaches the port
    check_finite: bool = True


def prefer_this_libpython() -> None:
    """Put this interpreter's libpython first on the library path of the processes Triton starts.

    Triton's Python-backend stub links ``libpython3.X.so`` dynamically; a system
    copy of another patch release found first makes the model fail to load
    (``'_thread.RLock' object has no attribute '_recursion_count'``). Child
    processes inherit ``os.environ``, so setting it here is enough.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return
    rest = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
    os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *rest])


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (Triton cannot bind port 0 itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int, flag: str) -> None:
    """Fail now, in one line, on a port already taken (Triton would exit and PyTriton wait 120 s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"{flag} {port}: cannot bind {host}:{port} ({e.strerror})") from None


def output_shapes(teacher: TeacherModel) -> dict[str, tuple[int, ...]]:
    """Per-image shape of each Triton output: every key the teacher offers (logits first, then each
    feature, each followed by its reductions), from the shapes measured once at load."""
    return teacher.output_keys


def top_k_served(num_classes: int) -> list[int]:
    """The K of ``TOP_K_SERVED`` a teacher of ``num_classes`` classes answers top-k (K <= classes)."""
    return [k for k in TOP_K_SERVED if k <= num_classes]


def top_k_outputs(teacher: TeacherModel) -> dict[str, tuple[int, ...]]:
    """The top-k outputs, UINT8: ``logits.topK`` -> its per-image shape (4K + 2,), for each K served."""
    return {reductions.make_key(reductions.LOGITS, f"top{k}"): (bytes_per_answer(k),)
            for k in top_k_served(teacher.num_classes)}


def pack_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k answers of ``logits`` [N, C] (``TopK.from_logits``) as uint8 [N, 4K + 2], a row an image.

    Row r, 4K + 2 bytes, little-endian: image r's K class indices (int16,
    largest logit first), then those K logits (float16), then its rest (float16:
    the log-mean-exp of the other C - K logits; 0 where K == C). That is
    ``TopK.to_bytes`` of the row alone; the batch's ``to_bytes`` is columnar
    (all indices, all values, all rests), so each row gathers its three runs.
    ``triton_config.unpack_top_k`` in the client reads it back.
    """
    n = logits.shape[0]
    data = np.frombuffer(TopK.from_logits(logits, k).to_bytes(), dtype=np.uint8)
    idx, val = n * k * 2, n * k * 4  # the columnar runs: indices, values, rests
    rows = np.concatenate([data[:idx].reshape(n, 2 * k), data[idx:val].reshape(n, 2 * k),
                           data[val:].reshape(n, 2)], axis=1)
    return torch.from_numpy(np.ascontiguousarray(rows))


def triton_max_batch(teacher: TeacherModel, max_batch: int, input_dtype: str,
                     top_k: Sequence[int] = ()) -> int:
    """``max_batch``, or fewer images where a request or reply of that many would pass Triton's 2 GiB a
    gRPC message: a request naming no outputs gets every one, and Triton can refuse a request only by its
    image count (an error raised in the batch would fail every request batched with it). ``top_k``: the K
    of the top-k outputs the model has besides (none for a model ``teacher_server.export`` writes)."""
    per_image_in = math.prod(teacher.input_shape) * np.dtype(INPUT_DTYPES[input_dtype]).itemsize
    per_image_out = (sum(math.prod(shape) for shape in teacher.output_keys.values()) * 4  # FP32 outputs
                     + sum(bytes_per_answer(k) for k in top_k))  # UINT8 top-k answers
    fit = images_that_fit(GRPC_MESSAGE_CEILING, max(per_image_in, per_image_out))
    if fit < 1:
        raise ValueError(f"one image's outputs ({per_image_out / 1e9:.1f} GB) are over Triton's 2 GiB a message")
    if fit < max_batch:
        log.warning("max batch %d on Triton instead of %d: a reply with every output of more images would "
                    "pass Triton's 2 GiB a gRPC message (%.1f MB an image); clients ask at most %d at a time",
                    fit, max_batch, per_image_out / 1e6, fit)
    return min(max_batch, fit)


def teacher_parameters(teacher: TeacherModel, top_k: Sequence[int] = ()) -> dict[str, str]:
    """What a client needs beyond tensor names and shapes; string values, as Triton's parameters are.

    ``reductions`` lists those offered (comma-separated); an output named
    ``NAME.REDUCTION`` is ``NAME`` reduced by it. ``top_k`` lists the K of the
    top-k answers offered (comma-separated; outputs ``logits.topK``, UINT8,
    ``pack_top_k``'s rows): those of the argument, ``top_k_served`` under
    ``start_triton``, none (empty) in a model ``teacher_server.export`` writes.
    ``dataset``, the data set it was trained on, only where its checkpoint
    records one.
    """
    return {"teacher_name": teacher.name, "arch": teacher.arch, "weights_sha256": teacher.weights_sha256,
            "flops_per_image": repr(float(teacher.flops_per_image)),
            "input_shape": ",".join(map(str, teacher.input_shape)),
            "num_classes": str(teacher.num_classes),
            "reductions": ",".join(reductions.REDUCTIONS),
            "top_k": ",".join(map(str, top_k)),
            **({"dataset": teacher.dataset} if teacher.dataset else {})}


class BatchInfer:
    """One model instance: a whole dynamic batch of requests through one forward pass.

    A top-k output (``logits.top10``) is made from the plain logits of that same
    forward (``pack_top_k``): every K asked of the batch from one set of logits.
    """

    def __init__(self, teacher: TeacherModel, outputs: list[str], check_finite: bool = True):
        self.teacher = teacher
        self.outputs = outputs
        self.check_finite = check_finite

    def __call__(self, requests) -> list[dict[str, np.ndarray]]:
        parts = [torch.from_numpy(np.asarray(r[INPUT_NAME])) for r in requests]
        names = [r.requested_output_names or self.outputs for r in requests]  # Triton's rule: none named, all
        images, wanted = gather(parts, names)
        if self.check_finite:
            require_finite(images)
        top = {key: reductions.top_k(reductions.parse_key(key)[1]) for key in wanted}
        top = {key: k for key, k in top.items() if k is not None}
        keys = list(dict.fromkeys(reductions.LOGITS if key in top else key for key in wanted))
        result, _ = self.teacher.forward(images, keys)
        for key, k in top.items():
            result[key] = pack_top_k(result[reductions.LOGITS], k)
        answers = split(result, [p.shape[0] for p in parts], names)
        return [{n: t.numpy() for n, t in answer.items()} for answer in answers]


START_TRIES = 2  # a start lost to PyTriton's handshake race is tried once more, on the same ports


def start_triton(teacher: TeacherModel, opts: TritonOptions):
    """Start ``tritonserver`` with the teacher bound and loaded; return the running ``Triton``.

    The caller stops it with ``.stop()`` (SIGINT to tritonserver, then wait). PyTriton's host process
    fetches its model's config from a Unix socket that the model's proxy opens in tritonserver; on a busy
    machine it may try before the proxy listens and fail the whole start (``lost_handshake``). Such a start
    is stopped and made again, once; any other failure is the user's to see at once.
    """
    for attempt in range(1, START_TRIES + 1):
        try:
            return _start_triton_once(teacher, opts)
        except TritonStartError as e:
            if not e.lost_handshake or attempt == START_TRIES:
                raise
            log.warning("Triton's model proxy did not answer its handshake in time (%s); starting again", e)


def lost_handshake(error: BaseException) -> bool:
    """Whether ``error`` is PyTriton's host failing to reach its model proxy's handshake socket (refused or
    timed out), the race ``start_triton`` retries, rather than a failure of the teacher or the ports."""
    if not isinstance(error, (ConnectionRefusedError, TimeoutError, FileNotFoundError)):
        return False
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "get_config_from_handshake_server":
            return True
        tb = tb.tb_next
    return False


def _start_triton_once(teacher: TeacherModel, opts: TritonOptions):
    prefer_this_libpython()
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    if opts.input_dtype not in INPUT_DTYPES:
        raise ValueError(f"--input-dtype must be one of {sorted(INPUT_DTYPES)}, got {opts.input_dtype!r}")
    if opts.instances < 1 or opts.max_batch < 1 or opts.queue_delay_us < 0:
        raise ValueError("--instances and --max-batch must be at least 1, --queue-delay-us at least 0")
    shapes, compact, served = output_shapes(teacher), top_k_outputs(teacher), top_k_served(teacher.num_classes)
    outputs = [*shapes, *compact]
    max_batch = triton_max_batch(teacher, opts.max_batch, opts.input_dtype, served)
    # One TeacherModel per instance: forwards with feature hooks must not share a module at once.
    instances = [teacher] + [dataclasses.replace(teacher, model=copy.deepcopy(teacher.model))
                             for _ in range(opts.instances - 1)]
    config = TritonConfig(grpc_address=opts.host, grpc_port=opts.grpc_port,
                          http_address=opts.host, http_port=opts.http_port,
                          metrics_address=opts.host, metrics_port=opts.metrics_port,
                          allow_gpu_metrics=False, exit_on_error=True)
    security = (TritonSecurityConfig(access_token=opts.access_token) if opts.restrict_endpoints
                else TritonSecurityConfig(restricted_endpoints=[]))
    triton = Triton(config=config, security_config=security)
    triton.bind(
        model_name=opts.model_name,
        model_version=MODEL_VERSION,
        infer_func=[BatchInfer(t, outputs, opts.check_finite) for t in instances],
        inputs=[Tensor(name=INPUT_NAME, dtype=INPUT_DTYPES[opts.input_dtype], shape=teacher.input_shape)],
        outputs=[*(Tensor(name=n, dtype=np.float32, shape=s) for n, s in shapes.items()),
                 *(Tensor(name=n, dtype=np.uint8, shape=s) for n, s in compact.items())],
        config=ModelConfig(max_batch_size=max_batch,
                           batcher=DynamicBatcher(max_queue_delay_microseconds=opts.queue_delay_us)),
        strict=False,
    )
    _publish_parameters(triton, opts.model_name, teacher_parameters(teacher, served))
    try:
        triton.run()
    except BaseException as e:
        logs = _server_logs(triton)
        triton.stop()
        if isinstance(e, Exception):
            errors = [line for line in logs.splitlines() if line.startswith("E") or "error" in line.lower()]
            detail = errors[-1].strip() if errors else str(e).splitlines()[0]
            raise TritonStartError(f"Triton did not start on {opts.host} (ports {opts.grpc_port}, "
                                   f"{opts.http_port}, {opts.metrics_port}): {detail[:400]}",
                                   lost_handshake=lost_handshake(e)) from None
        raise
    return triton


class TritonStartError(OSError):
    """tritonserver exited or the model did not load; the message holds Triton's last error line.
    ``lost_handshake``: the start lost PyTriton's handshake race (``lost_handshake()``), worth one more try."""

    def __init__(self, message: str, *, lost_handshake: bool = False):
        super().__init__(message)
        self.lost_handshake = lost_handshake


def _server_logs(triton) -> str:
    server = getattr(triton, "_triton_server", None)
    return server.logs() if server is not None else ""


def _publish_parameters(triton, model_name: str, params: dict[str, str]) -> None:
    """Add ``params`` to the model's Triton config (PyTriton 0.7 has no public hook for it)."""
    for model in triton._model_manager.models:
        if model.model_name == model_name:
            model._get_triton_model_config().backend_parameters.update(params)
            return
    log.warning("could not add the teacher's parameters to the Triton model config")


def read_or_make_token(path: str | os.PathLike) -> str:
    """The access token in ``path``; a new random one, written there (mode 600), if there is none."""
    path = Path(path)
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


GRPC_ONLY_FLAGS = ("tls_cert", "tls_key", "token_file", "stats_file")


def options_from_args(args) -> TritonOptions:
    """The CLI flags as ``TritonOptions``; port 0 becomes a free port (Triton cannot pick one)."""
    given = [f"--{f.replace('_', '-')}" for f in GRPC_ONLY_FLAGS if getattr(args, f, None)]
    if given:
        raise ValueError(f"{', '.join(given)}: gRPC-backend options, not wired up for --backend triton")
    if args.triton_token_file and args.triton_open_endpoints:
        raise ValueError("give --triton-token-file or --triton-open-endpoints, not both")
    metrics_port = 8002 if getattr(args, "metrics_port", None) is None else args.metrics_port
    ports = [args.port, args.http_port, metrics_port]
    if min(ports) < 0 or max(ports) > 65535:
        raise ValueError(f"ports must be 0..65535, got {ports}")
    if len({p for p in ports if p}) != len([p for p in ports if p]):
        raise ValueError(f"--port, --http-port and --metrics-port must differ, got {ports}")
    for flag, port in zip(("--port", "--http-port", "--metrics-port"), ports):
        if port:
            check_port_free(args.host, port, flag)
    grpc_port, http_port, metrics_port = (p or free_port(args.host) for p in ports)
    return TritonOptions(
        host=args.host, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
        model_name=args.model_name, max_batch=args.max_batch, queue_delay_us=args.queue_delay_us,
        instances=args.instances, input_dtype=args.input_dtype,
        access_token=read_or_make_token(args.triton_token_file) if args.triton_token_file else None,
        restrict_endpoints=not args.triton_open_endpoints, check_finite=not args.allow_nonfinite)


def serve_triton(teacher: TeacherModel, args) -> None:
    """The CLI's Triton life: start tritonserver, report, serve until SIGINT/SIGTERM, stop it."""
    import signal
    import threading

    opts = options_from_args(args)
    triton = start_triton(teacher, opts)
    try:
        log.info("serving %s (%s, input %s %s, %d classes, %.3g MFLOPs/image) on Triton as model %r v%d: "
                 "gRPC %s:%d, HTTP %s:%d, metrics http://%s:%d/metrics; statistics endpoint %s",
                 teacher.name, teacher.arch, opts.input_dtype, "x".join(map(str, teacher.input_shape)),
                 teacher.num_classes, teacher.flops_per_image / 1e6, opts.model_name, MODEL_VERSION,
                 opts.host, opts.grpc_port, opts.host, opts.http_port, opts.host, opts.metrics_port,
                 "open" if not opts.restrict_endpoints else
                 f"token in {args.triton_token_file}" if args.triton_token_file else "token-protected (generated)")
        if args.port_file:
            Path(args.port_file).write_text(f"{opts.grpc_port}\n")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, _frame: stop.set())
        # Wake up now and then: if tritonserver dies, exit rather than serve nothing.
        while not stop.wait(2.0):
            if not triton.is_alive():
                raise TritonStartError("tritonserver exited unexpectedly")
        log.info("stopping Triton")
    finally:
        triton.stop()
    log.info("stopped")
