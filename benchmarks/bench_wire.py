"""Pixels or view recipes on the wire: bytes per teacher image and requests per second, side by side in one run.

    python benchmarks/bench_wire.py            # 1x28x28, 3x32x32, 3x224x224; 1 and 4 clients (about 2.5 min)
    python benchmarks/bench_wire.py --quick    # fewer, shorter slices: a smoke check

For each image shape a teacher server runs in its own process (``build_server``, a free localhost
port) with a random-weight teacher (resnet8; torchvision's mobilenet_v3_small at 224) and a seeded
uint8 training split of that shape in memory, padded and flipped as CIFAR's is (its views must be
rendered, not just looked up). Clients are the trainer's own (``connect(url, send=...)``), each on
its own channel, sending batches of k UNIX-style rows (a view mixed with a partner) back to back and
waiting for the logits: the pixels as the trainer renders them (float16 on the wire), or the rows'
104-byte recipes, which the server renders. Pixels and recipes take turns in short slices
(``--rounds``), so other load falls on both alike. Bytes per image are the client's counters (the
serialized requests); the server's seconds per image (rendering, and the forward for scale) come
from its Stats. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

SHAPES = {"1x28x28": ((1, 28, 28), "resnet8", 2, 4096), "3x32x32": ((3, 32, 32), "resnet8", 4, 4096),
          "3x224x224": ((3, 224, 224), "torchvision.mobilenet_v3_small", 16, 512)}  # shape, teacher, pad, images


def stored_images(name: str):
    """The split both sides hold: seeded, so the server's process and this one build the same."""
    from common.views import StoredImages

    (c, h, w), _, pad, n = SHAPES[name]
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=gen)
    return StoredImages(images, torch.randint(0, 10, (n,), generator=gen), pad, True, (0.5,) * c, (0.25,) * c)


def serve(name: str, max_batch: int, port_file: str) -> None:
    """The server process: the teacher and the split of ``name``, until SIGINT/SIGTERM."""
    from common.teacher_model import load_teacher
    from teacher_server.recipes import ServedData
    from teacher_server.server import build_server

    shape, arch, _, _ = SHAPES[name]
    teacher = load_teacher(arch=arch, num_classes=10, input_shape=shape, seed=0)
    server, _, port = build_server(teacher, port=0, max_batch=max_batch, data=ServedData(name, stored_images(name)))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    Path(port_file).write_text(f"{port}\n")
    while not stop.wait(0.2):
        pass
    server.stop(grace=None).wait()


def start(name: str, max_batch: int, workdir: Path) -> tuple[subprocess.Popen, int]:
    port_file = workdir / f"{name}.port"
    log = (workdir / f"{name}.log").open("w")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", name, "--k", str(max_batch),
                             "--port-file", str(port_file)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not port_file.is_file() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise OSError(f"the {name} server did not start; see {workdir / (name + '.log')}")
        time.sleep(0.2)
    return proc, int(port_file.read_text())


def batches(stored, k: int, count: int):
    """``count`` batches of k UNIX rows: (pixels as the trainer renders them, their recipes)."""
    from common.views import Views, render_views

    gen = torch.Generator().manual_seed(1)
    out = []
    for epoch in range(count):
        main, partner = (Views(stored.draw(0, epoch, torch.randint(0, len(stored), (k,), generator=gen)))
                         for _ in range(2))
        views = main.mixed_with(partner, torch.rand(k, generator=gen))
        out.append((render_views(stored, views), views))
    return out


def drive(clients, work, seconds: float) -> tuple[int, float]:
    """Every client sends batches back to back for ``seconds``; (requests answered, wall seconds)."""
    done = [0] * len(clients)

    def loop(i: int, client) -> None:
        deadline, j = time.monotonic() + seconds, i
        while time.monotonic() < deadline:
            images, views = work[j % len(work)]
            client.submit(images, ["logits"], views=views).result()
            done[i] += 1
            j += 1
    start = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done), time.perf_counter() - start


def server_figures(port: int) -> dict:
    import grpc

    from protos import teacher_pb2 as pb
    from protos import teacher_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        s = pb_grpc.TeacherStub(channel).Stats(pb.StatsRequest(), timeout=30)
    return {"rendered": s.rendered_images, "render_seconds": s.render_seconds, "forward_images": s.forward_images,
            "busy_seconds": s.busy_seconds}


def measure(name: str, args, workdir: Path) -> list[dict]:
    from student_trainer.teachers import connect

    proc, port = start(name, args.k, workdir)
    url = f"grpc://127.0.0.1:{port}"
    rows = []
    try:
        work = batches(stored_images(name), args.k, 4)
        pools = {(send, n): [connect(url, wire_dtype="float16", send=send) for _ in range(n)]
                 for send in ("pixels", "recipes") for n in args.clients}
        for clients in pools.values():  # one batch each: connections up, server warm
            for c in clients:
                c.submit(*work[0][:1], ["logits"], views=work[0][1]).result()
        totals = {key: [0, 0.0] for key in pools}
        for _ in range(args.rounds):
            for key, clients in pools.items():
                requests, wall = drive(clients, work, args.seconds)
                totals[key][0] += requests
                totals[key][1] += wall
        figures = server_figures(port)
        for send in ("pixels", "recipes"):
            counters = [c.counters for n in args.clients for c in pools[(send, n)]]
            rows.append({"shape": name, "teacher": SHAPES[name][1], "send": send,
                         "bytes_per_image": sum(c.bytes_sent for c in counters) / sum(c.images for c in counters),
                         **{f"rps_{n}": totals[(send, n)][0] / totals[(send, n)][1] for n in args.clients},
                         "render_ms": 1e3 * figures["render_seconds"] / figures["rendered"] if send == "recipes"
                         else None,
                         "forward_ms": 1e3 * figures["busy_seconds"] / figures["forward_images"]})
        for clients in pools.values():
            for c in clients:
                c.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def table(rows: list[dict], clients: list[int]) -> str:
    head = ("| images | teacher | sent as | bytes/image | " + " | ".join(f"requests/s, {n} client{'s' * (n > 1)}"
                                                                 for n in clients)
            + " | server render ms/image | server forward ms/image |")
    lines = [head, "|" + "---|" * (6 + len(clients))]
    for r in rows:
        render = f"{r['render_ms']:.3f}" if r["render_ms"] is not None else "-"
        lines.append(f"| {r['shape']} | {r['teacher']} | {r['send']} | {r['bytes_per_image']:,.0f} | "
                     + " | ".join(f"{r[f'rps_{n}']:.1f}" for n in clients) + f" | {render} | {r['forward_ms']:.3f} |")
    lines.append("")
    for pixels, recipes in zip(rows[::2], rows[1::2]):
        lines.append(f"{pixels['shape']}: recipes send {pixels['bytes_per_image'] / recipes['bytes_per_image']:.0f}x "
                     f"fewer bytes; requests/s recipes / pixels "
                     + ", ".join(f"{recipes[f'rps_{n}'] / pixels[f'rps_{n}']:.2f} ({n} client{'s' * (n > 1)})"
                                 for n in clients))
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"any of {', '.join(SHAPES)}")
    p.add_argument("--k", type=int, default=48, help="rows per request (the UNIX k)")
    p.add_argument("--clients", default="1,4", help="concurrent clients, each setting in turn")
    p.add_argument("--rounds", type=int, default=3, help="alternating slices of each setting")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per slice")
    p.add_argument("--quick", action="store_true", help="one round of 0.5 s slices, k=16")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--port-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.k, args.port_file)
        return []
    if args.quick:
        args.rounds, args.seconds, args.k = 1, 0.5, 16
    args.clients = [int(n) for n in args.clients.split(",")]
    torch.set_num_threads(1)  # the clients encode and decode; the cores are the server's
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-wire-") as tmp:
        for name in args.shapes.split(","):
            rows += measure(name, args, Path(tmp))
    print(f"k={args.k} rows a request (each a view mixed with a partner), logits back (float32), pixels in "
          f"float16; {args.rounds} rounds of {args.seconds:g} s slices per setting; {os.cpu_count()} CPUs shared "
          f"by the server and the clients\n")
    print(table(rows, args.clients))
    return rows


if __name__ == "__main__":
    main()
