"""Bytes per teacher answer, dense or top-k, on the wire and in the replay store, at 10, 100 and 1,000 classes.

    python benchmarks/bench_answer_bytes.py                 # 10, 100, 1000 classes; K = 5, 10, 20

Wire: for each class count a random resnet8 teacher (3x32x32 input) is served by the real gRPC server in this
process (``build_server``, a free localhost port); one request of 64 images asks for ``logits`` with the
reply in float32 (what the trainer asks for), in float16, and for ``logits.topK`` (a TOPK tensor: K int16
indices, K float16 logits and one float16 rest a row). Bytes per answer are the serialized reply over its
images (``InferResponse.ByteSize()``, what the server's ``bytes_out`` counts), checked against the server.

Store: 256 replayed views, each an unmixed recipe with its answer, written by the replay policy's own shelf
(``ViewShelf``) into an LMDB store; bytes per stored view are ``bytes_written / written``, as a run's summary
counts them (``answer_store`` in summary.json), and the LMDB file's growth per view beside them. Dense float16
is not a form the trainer stores (it keeps float32 answers); its row encodes a float16 tensor with the same
codec, for comparison.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

VIEWS = 256
BATCH = 64


def wire_bytes(classes: int, ks: list[int]) -> dict[str, float]:
    """Bytes per answer in one reply of BATCH images: dense float32, dense float16 and each top-k."""
    import grpc

    from common import codec
    from common.teacher_model import load_teacher
    from protos import teacher_pb2 as pb
    from protos import teacher_pb2_grpc as pb_grpc
    from teacher_server.server import build_server

    teacher = load_teacher(arch="resnet8", num_classes=classes, input_shape=(3, 32, 32), seed=0)
    server, servicer, port = build_server(teacher, host="127.0.0.1", port=0, max_batch=BATCH)
    images = codec.encode(torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0)), "float16")
    asks = {"float32": ("logits", pb.FLOAT32), "float16": ("logits", pb.FLOAT16),
            **{f"top-{k}": (f"logits.top{k}", pb.FLOAT32) for k in ks if k <= classes}}
    out = {}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.TeacherStub(channel)
            for name, (key, dtype) in asks.items():
                before = servicer.counters.snapshot()["bytes_out"]
                reply = stub.Infer(pb.InferRequest(images=images, outputs=[key], output_dtype=dtype))
                counted = servicer.counters.snapshot()["bytes_out"] - before
                assert counted == reply.ByteSize(), (name, counted, reply.ByteSize())
                out[name] = reply.ByteSize() / BATCH
    finally:
        server.stop(grace=None).wait()
    return out


def stored_bytes(classes: int, ks: list[int], workdir: Path) -> dict[str, tuple[float, float]]:
    """(bytes_written / written, LMDB file growth) per stored view, for each answer form."""
    from common.answer_store import open_store
    from common.answer_store.codec import Entry
    from common.topk import TopK
    from student_trainer.query.stored_views import ViewShelf

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(VIEWS, classes, generator=g) * 3
    recipes = [[s, 2, 3, 180, 200, s % 2, -1, 0, 0, 0, 0, 0, 0] for s in range(VIEWS)]   # unmixed views
    forms = {"float32": ("logits", logits, torch.float32), "float16": ("logits", logits, torch.float16),
             **{f"top-{k}": (f"logits.top{k}", TopK.from_logits(logits, k).dense(), torch.float32)
                for k in ks if k <= classes}}
    out = {}
    for name, (key, answers, dtype) in forms.items():
        path = workdir / f"store-{classes}-{name}"
        with open_store(f"lmdb:{path}") as store:
            shelf = ViewShelf(store, teacher_sha256="t", data_fingerprint="d", keys=[key], views=1, classes=classes)
            entries = [Entry({"recipe": r, "run": 123456789, "step": 4321}, {key: a.to(dtype)})
                       for r, a in zip(recipes, answers)]
            size_before = sum(f.stat().st_size for f in path.iterdir())
            shelf.write(list(range(VIEWS)), [[0]] * VIEWS, entries)
            c = store.counters.as_dict()
        growth = sum(f.stat().st_size for f in path.iterdir()) - size_before
        out[name] = (c["bytes_written"] / c["written"], growth / VIEWS)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", default="10,100,1000", help="class counts, comma-separated")
    p.add_argument("--k", default="5,10,20", help="the K of the top-k answers, comma-separated")
    args = p.parse_args(argv)
    classes = [int(c) for c in args.classes.split(",")]
    ks = [int(k) for k in args.k.split(",")]
    print("| classes | answer | wire bytes / answer | stored bytes / view | LMDB file growth / view |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for c in classes:
            wire = wire_bytes(c, ks)
            stored = stored_bytes(c, ks, Path(tmp))
            for name in wire:
                s, growth = stored[name]
                print(f"| {c:,} | {name} | {wire[name]:,.1f} | {s:,.0f} | {growth:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
