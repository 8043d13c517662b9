"""Bytes on the wire for what each KD method asks of the teacher, full features vs server-side reductions.

    python benchmarks/bench_feature_bytes.py            # resnet32x4 teacher, k = 48 and 64

A random resnet32x4 teacher (3x32x32 input, 100 classes; the CRD/mdistiller CIFAR-100 pair with a
resnet8x4 student) is served by the real gRPC server in this process (``build_server``, a free
localhost port), and the trainer's own client (``student_trainer.teachers.connect``) sends one step's
k images per row, asking for the keys the method needs: once in full (reduction ``none``), once with
the best reduction the method can use. Bytes are the client's counters (``bytes_received``, the
serialized replies), checked against the server's ``bytes_out``; nothing is computed by arithmetic.
Replies are float32, as the trainer asks for them. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

# method -> (keys in full, keys with the best reduction the method can use, note)
METHODS: list[tuple[str, list[str], list[str], str]] = [
    ("kd / dkd", ["logits"], ["logits"], "logits only"),
    ("at", ["stage1", "stage2", "stage3"], ["stage1.attention", "stage2.attention", "stage3.attention"],
     "AT's attention maps: exact"),
    ("sp", ["stage3"], ["stage3"], "SP's batch Gram matrix needs the full map"),
    ("sp, pooled (an option)", ["stage3"], ["stage3.pool"], "Gram of pooled vectors: an approximation"),
    ("fitnet", ["stage2"], ["stage2"], "the regressor needs the full map"),
    ("pkt / rkd / crd", ["pool"], ["pool"], "the embedding is already 2-D"),
    ("vid", ["stage1", "stage2", "stage3"], ["stage1", "stage2", "stage3"], "VID's variational maps need full maps"),
]


def measure(client, servicer, images: torch.Tensor, keys: list[str]) -> int:
    """Bytes received for one request of ``images`` asking for ``keys``; the server must count the same."""
    before, server_before = client.counters.bytes_received, servicer.counters.snapshot()["bytes_out"]
    requests = client.counters.requests
    got = client.infer(images, outputs=keys)
    assert client.counters.requests == requests + 1, "one step must be one request (raise --max-batch)"
    assert sorted(got) == sorted(keys)
    received = client.counters.bytes_received - before
    served = servicer.counters.snapshot()["bytes_out"] - server_before
    if received != served:
        raise AssertionError(f"{keys}: the client counted {received} bytes, the server {served}")
    return received


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet32x4")
    p.add_argument("--student-arch", default="resnet8x4")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--k", default="48,64", help="images per step sent to the teacher (comma-separated)")
    p.add_argument("--wire-dtype", default="float16", help="dtype of the images sent")
    args = p.parse_args(argv)
    ks = [int(k) for k in args.k.split(",")]

    from common.features import capture_features, feature_names
    from common.models import build_model
    from student_trainer.teachers import connect
    from common.teacher_model import load_teacher
    from teacher_server.server import build_server

    torch.set_num_threads(2)
    shape = (3, 32, 32)
    teacher = load_teacher(arch=args.arch, num_classes=args.num_classes, input_shape=shape, seed=0)
    student = build_model(args.student_arch, num_classes=args.num_classes, in_channels=shape[0]).eval()
    with torch.no_grad(), capture_features(student, feature_names(student)) as feats:
        student(torch.zeros(1, *shape))
    server, servicer, port = build_server(teacher, host="127.0.0.1", port=0, max_batch=max(ks))
    rows = []
    try:
        with connect(f"grpc://127.0.0.1:{port}", wire_dtype=args.wire_dtype) as client:
            for k in ks:
                images = torch.randn(k, *shape, generator=torch.Generator().manual_seed(k))
                sent_before = client.counters.bytes_sent
                measure(client, servicer, images, ["logits"])
                sent = client.counters.bytes_sent - sent_before
                for method, full, reduced, note in METHODS:
                    full_bytes = measure(client, servicer, images, full)
                    reduced_bytes = full_bytes if reduced == full else measure(client, servicer, images, reduced)
                    rows.append((method, k, full, full_bytes, reduced, reduced_bytes, note, sent))
    finally:
        server.stop(grace=None).wait()

    print(f"teacher {args.arch} (random weights, {args.num_classes} classes, input {'x'.join(map(str, shape))}), "
          f"per-image outputs: " + ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in teacher.output_shapes.items()))
    print(f"student {args.student_arch}, per-image features: "
          + ", ".join(f"{n} {'x'.join(map(str, f.shape[1:]))}" for n, f in feats.items()))
    print(f"images sent per step ({args.wire_dtype}): "
          + ", ".join(f"k={k}: {sent:,} bytes" for k, sent in dict((r[1], r[7]) for r in rows).items()))
    print("bytes received per step (float32 replies), counted by the client and equal to the server's count:\n")
    print("| method | k | keys, reduction none | bytes/step | keys, best reduction | bytes/step | reduced / none | |")
    print("|---|---|---|---|---|---|---|---|")
    for method, k, full, full_bytes, reduced, reduced_bytes, note, _ in rows:
        print(f"| {method} | {k} | {', '.join(full)} | {full_bytes:,} | {', '.join(reduced)} | {reduced_bytes:,} "
              f"| {reduced_bytes / full_bytes:.4f} | {note} |")


if __name__ == "__main__":
    main()
