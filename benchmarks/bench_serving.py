"""One teacher, one batch size k, three ways to run it, side by side in one run:

    in-process   TeacherModel.forward in this process (no wire): the floor
    grpc://      python -m teacher_server                   (our gRPC service), separate process
    triton://    python -m teacher_server --backend triton  (a real tritonserver), separate process

    python benchmarks/bench_serving.py                                 # the default checkpoint, k=48
    python benchmarks/bench_serving.py --arch resnet32x4 --num-classes 100 --k 64 --requests 100

Both servers are started on free localhost ports and stopped (SIGINT) at the end. One client
sends batches of k images back to back through the same ``TeacherClient`` the trainer uses
(``student_trainer.teachers.connect``), so a call's time includes encoding and decoding, as in
training. The three ways take turns in short slices (``--rounds``), so that load from other
work on a shared machine falls on all of them alike. Prints images/s and p50/p99 latency per
call, and each as a ratio to in-process.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from common.cli_errors import one_line_errors, parse_shape  # noqa: E402

DEFAULT_CHECKPOINT = ROOT / "experiments/teachers/fashion-mnist-resnet20.pt"


def timed_calls(call, images: torch.Tensor, calls: int) -> list[float]:
    """Seconds of each of ``calls`` back-to-back ``call(images)``."""
    latencies = []
    for _ in range(calls):
        t = time.perf_counter()
        call(images)
        latencies.append(time.perf_counter() - t)
    return latencies


def interleaved(ways: dict, images: torch.Tensor, requests: int, warmup: int, rounds: int) -> dict[str, dict]:
    """Measure every way in ``rounds`` alternating slices, so load from others on a shared
    machine falls on all of them alike; figures are over all slices together."""
    for call in ways.values():
        timed_calls(call, images, warmup)
    latencies: dict[str, list[float]] = {name: [] for name in ways}
    per_round = max(1, requests // rounds)
    for _ in range(rounds):
        for name, call in ways.items():
            latencies[name] += timed_calls(call, images, per_round)
    rows = {}
    for name, lat in latencies.items():
        ms = np.array(lat) * 1e3
        rows[name] = {"images_per_s": len(lat) * len(images) / sum(lat), "p50_ms": float(np.percentile(ms, 50)),
                      "p99_ms": float(np.percentile(ms, 99)), "calls": len(lat)}
    return rows


def start_server(teacher_flags: list[str], backend: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    """``python -m teacher_server`` on free ports; return the process and the URL to reach it."""
    from teacher_server.triton_backend import free_port

    port_file = workdir / f"{backend}.port"
    cmd = [sys.executable, "-m", "teacher_server", *teacher_flags, "--backend", backend,
           "--port-file", str(port_file), "--log-level", "WARNING"]
    if backend == "triton":
        metrics = free_port()
        cmd += ["--port", str(free_port()), "--http-port", str(free_port()), "--metrics-port", str(metrics)]
    else:
        cmd += ["--port", "0"]
    log = (workdir / f"{backend}.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not port_file.is_file() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise OSError(f"{backend} server did not start; see {workdir / (backend + '.log')}")
        time.sleep(0.2)
    port = int(port_file.read_text())
    url = f"triton://127.0.0.1:{port}/teacher?metrics_port={metrics}" if backend == "triton" \
        else f"grpc://127.0.0.1:{port}"
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    for _ in range(2):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=45)
                return
            except subprocess.TimeoutExpired:
                pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def table(rows: dict[str, dict], header: str) -> str:
    base = rows["in-process"]
    columns = (f"{'':<12}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}   "
               f"{'images/s':>9}{'p50':>7}{'p99':>7}  (ratios to in-process)")
    lines = [header, columns]
    for name, r in rows.items():
        lines.append(f"{name:<12}{r['images_per_s']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}   "
                     f"{r['images_per_s'] / base['images_per_s']:>9.2f}{r['p50_ms'] / base['p50_ms']:>7.2f}"
                     f"{r['p99_ms'] / base['p99_ms']:>7.2f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help=f"default: {DEFAULT_CHECKPOINT.relative_to(ROOT)} (unless --arch)")
    p.add_argument("--arch", help="a randomly initialised teacher instead (same compute as a trained one)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--input-shape", type=parse_shape, default=(3, 32, 32), metavar="C,H,W")
    p.add_argument("--k", type=int, default=48, help="images per call (the UNIX k)")
    p.add_argument("--requests", type=int, default=200, help="timed calls per way")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10, help="alternating slices the calls are split into")
    p.add_argument("--wire-dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads here and in both servers (default: torch's; 1 is steadier on a busy machine)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    with one_line_errors("bench_serving"):
        from student_trainer.teachers import connect
        from common.teacher_model import load_teacher

        if args.threads:
            torch.set_num_threads(args.threads)
            os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the server processes
        checkpoint = None if args.arch else str(args.checkpoint or DEFAULT_CHECKPOINT)
        shape = {} if checkpoint else {"num_classes": args.num_classes, "input_shape": args.input_shape}
        teacher = load_teacher(checkpoint, arch=args.arch, **shape)
        flags = ["--checkpoint", checkpoint] if checkpoint else \
            ["--arch", args.arch, "--num-classes", str(args.num_classes),
             "--input-shape", ",".join(map(str, args.input_shape))]
        flags += ["--max-batch", str(max(args.k, 1))]
        images = torch.randn(args.k, *teacher.input_shape, generator=torch.Generator().manual_seed(0))
        images = images.to(getattr(torch, args.wire_dtype))
        ways = {"in-process": lambda x: teacher.forward(x, ["logits"])}
        with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp, contextlib.ExitStack() as stack:
            for backend in ("grpc", "triton"):
                proc, url = start_server(flags + (["--input-dtype", args.wire_dtype] if backend == "triton" else []),
                                         backend, Path(tmp))
                stack.callback(stop_server, proc)
                client = stack.enter_context(connect(url, wire_dtype=args.wire_dtype))
                ways[f"{backend}://"] = client.infer
            rows = interleaved(ways, images, args.requests, args.warmup, args.rounds)
        header = (f"teacher {teacher.name} ({teacher.arch}, {'x'.join(map(str, teacher.input_shape))}), "
                  f"k={args.k} images per call, {args.wire_dtype} on the wire, logits back, "
                  f"{args.requests} calls in {args.rounds} alternating slices, 1 client, {os.cpu_count()} CPUs, "
                  f"torch threads {torch.get_num_threads()}")
        print(table(rows, header))
        if args.json:
            Path(args.json).write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
        return rows


if __name__ == "__main__":
    main()
