"""Load on one teacher server: M concurrent clients, each sending Infer back to back for T seconds.

    python benchmarks/bench_load.py --clients 1,4,8 --seconds 10
    python benchmarks/bench_load.py --url grpc://10.0.0.5:50051 --clients 8 --batch 48

Without ``--url`` it starts ``python -m teacher_server`` (random ``--arch`` weights,
same compute as a trained one) on a free localhost port and stops it at the end.
Each client is its own process with its own channel (no shared GIL); it sends the
same pre-encoded batch again and again, so what is measured is the server and
the wire, not the encoding. Prints requests/s, images/s, p50/p99 latency and the
number of failed calls per client count.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from protos import teacher_pb2 as pb  # noqa: E402
from protos import teacher_pb2_grpc as pb_grpc  # noqa: E402

WIRE = {"float32": (pb.FLOAT32, "<f4"), "float16": (pb.FLOAT16, "<f2")}


def open_channel(url: str, tls_ca: str | None) -> grpc.Channel:
    parts = urlsplit(url)
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    if parts.scheme == "grpcs":
        ca = Path(tls_ca).read_bytes() if tls_ca else None
        return grpc.secure_channel(parts.netloc, grpc.ssl_channel_credentials(ca), options=options)
    return grpc.insecure_channel(parts.netloc, options=options)


def client(url, tls_ca, metadata, batch, wire, seconds, seed, barrier, results) -> None:
    """One client process: warm up, wait for the others, then send back to back until time is up."""
    with open_channel(url, tls_ca) as channel:
        stub = pb_grpc.TeacherStub(channel)
        shape = list(stub.Describe(pb.DescribeRequest(), metadata=metadata, timeout=60).input_shape)
        code, np_dtype = WIRE[wire]
        data = np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np_dtype).tobytes()
        request = pb.InferRequest(images=pb.Tensor(dtype=code, shape=[batch, *shape], data=data),
                                  output_dtype=pb.FLOAT32, request_id=f"bench-{seed}")
        stub.Infer(request, metadata=metadata, timeout=60)  # warm-up, not counted
        barrier.wait()
        latencies, failed = [], {}
        start = time.perf_counter()
        deadline = start + seconds
        while (now := time.perf_counter()) < deadline:
            try:
                stub.Infer(request, metadata=metadata, timeout=60)
                latencies.append(time.perf_counter() - now)
            except grpc.RpcError as e:
                failed[e.code().name] = failed.get(e.code().name, 0) + 1
        results.put({"latencies": latencies, "failed": failed, "elapsed": time.perf_counter() - start})


def run_level(url, tls_ca, metadata, clients, batch, wire, seconds) -> dict:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(clients), ctx.Queue()
    procs = [ctx.Process(target=client, args=(url, tls_ca, metadata, batch, wire, seconds, i, barrier, results))
             for i in range(clients)]
    for p in procs:
        p.start()
    parts = [results.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join()
    lat = np.array([x for part in parts for x in part["latencies"]])
    failed: dict[str, int] = {}
    for part in parts:
        for code, n in part["failed"].items():
            failed[code] = failed.get(code, 0) + n
    rps = sum(len(p["latencies"]) / p["elapsed"] for p in parts)
    return {"clients": clients, "batch": batch, "wire": wire, "seconds": seconds, "requests": int(lat.size),
            "requests_per_s": rps, "images_per_s": rps * batch,
            "p50_ms": float(np.percentile(lat, 50) * 1e3) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99) * 1e3) if lat.size else None,
            "failed": sum(failed.values()), "failed_by_code": failed}


def start_server(args) -> tuple[subprocess.Popen, str]:
    from common.launch import start_teacher

    try:
        proc, port = start_teacher("--arch", args.arch, "--input-shape", args.input_shape, "--num-classes",
                                   args.num_classes, "--max-batch", max(args.batch, 256), "--port", 0,
                                   "--device", args.device, "--log-level", "WARNING",
                                   port_file=Path(tempfile.mkdtemp()) / "port", cwd=ROOT)
    except (ChildProcessError, TimeoutError) as e:
        sys.exit(f"bench_load: error: {e}")
    return proc, f"grpc://127.0.0.1:{port}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="benchmarks/bench_load.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (grpc:// or grpcs://); default: start one")
    p.add_argument("--clients", default="1,4,8", help="client counts to run, comma-separated")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per client count")
    p.add_argument("--batch", type=int, default=48, help="images per request (UNIX-KD's k)")
    p.add_argument("--wire-dtype", choices=sorted(WIRE), default="float16")
    p.add_argument("--token-file", help="shared token of the server")
    p.add_argument("--tls-ca", help="CA certificate for a grpcs:// server")
    p.add_argument("--client-id", default="bench_load", help="x-client-id sent (server metrics label)")
    p.add_argument("--arch", default="resnet20", help="model of the server started here")
    p.add_argument("--input-shape", default="1,28,28", help="C,H,W of the server started here")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--device", default="cpu", help="device of the server started here")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    try:
        levels = [int(c) for c in args.clients.split(",")]
    except ValueError:
        sys.exit(f"bench_load: error: --clients takes counts like 1,4,8, got {args.clients!r}")
    if min(levels) < 1 or args.batch < 1 or args.seconds <= 0:
        sys.exit("bench_load: error: --clients, --batch and --seconds must be positive")
    metadata = [("x-client-id", args.client_id)]
    if args.token_file:
        metadata.append(("authorization", "Bearer " + Path(args.token_file).read_text().strip()))
    server, url = (None, args.url) if args.url else start_server(args)
    try:
        print(f"server {url}  batch {args.batch} ({args.wire_dtype})  {args.seconds:g} s per level  "
              f"{os.cpu_count()} CPUs here", flush=True)
        print(f"{'clients':>7} {'req/s':>8} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}")
        rows = []
        for n in levels:
            r = run_level(url, args.tls_ca, metadata, n, args.batch, args.wire_dtype, args.seconds)
            rows.append(r)
            print(f"{n:>7} {r['requests_per_s']:>8.1f} {r['images_per_s']:>9.0f} {r['p50_ms'] or 0:>8.1f} "
                  f"{r['p99_ms'] or 0:>8.1f} {r['failed']:>6}", flush=True)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
