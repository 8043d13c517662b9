"""How far a top-k answer's rebuilt distribution is from the teacher's dense one, on a trained teacher.

    python benchmarks/topk_fidelity.py --teacher experiments/teachers/fashion-mnist-resnet56.pt --dataset fashion-mnist
    python benchmarks/topk_fidelity.py --teacher runs/teacher-synthetic-100/best.pt --dataset synthetic \\
        --num-classes 100 --k 1,2,3,5,10,20

For every test image the teacher's logits are computed once (in this process, float32) and rebuilt from their
top K (``common.topk``: K logits kept, the rest at their log-mean-exp), as ``--answer-topk K`` gives them to a
loss. Printed per K, means over the images: KL(dense || rebuilt) of the softmax at T = 1 and at T = 4 (KD's
temperature, where the tail matters more), the teacher's probability mass at T = 4 that the top K hold, and
the share of images whose top-5 classes (at most C) agree between the dense and the rebuilt logits (a rebuilt
answer keeps the order of its top K, so top-1 always agrees for K >= 1; past K the rebuilt tail is flat).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def kl(dense: torch.Tensor, rebuilt: torch.Tensor, T: float) -> torch.Tensor:
    """KL(softmax(dense / T) || softmax(rebuilt / T)) per row, in nats."""
    p = F.log_softmax(dense / T, dim=1)
    return (p.exp() * (p - F.log_softmax(rebuilt / T, dim=1))).sum(dim=1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True, help="a teacher checkpoint (common.checkpoint format)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--num-classes", type=int, default=None, help="synthetic only")
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--k", default="1,2,3,5", help="the K to measure, comma-separated")
    args = p.parse_args(argv)

    from common.data import build_dataset
    from common.teacher_model import load_teacher
    from common.topk import TopK

    teacher = load_teacher(checkpoint=args.teacher)
    spec = build_dataset(args.dataset, test_size=args.test_size, num_classes=args.num_classes,
                         image_shape=tuple(teacher.input_shape) if args.dataset == "synthetic" else None)
    loader = torch.utils.data.DataLoader(spec.test, batch_size=256)
    chunks = [teacher.forward(x, ["logits"])[0]["logits"] for x, _ in loader]
    dense = torch.cat(chunks).float()
    n, classes = dense.shape
    top5 = min(5, classes)
    print(f"teacher {args.teacher} ({teacher.arch}, {classes} classes), {n} test images of {args.dataset}")
    print("| K | KL at T = 1 (nats) | KL at T = 4 (nats) | mass in top K at T = 4 | top-5 agrees | top-1 agrees |")
    print("|---|---|---|---|---|---|")
    for k in (int(k) for k in args.k.split(",")):
        if k > classes:
            continue
        rebuilt = TopK.from_logits(dense, k).dense()
        mass = F.softmax(dense / 4, dim=1).topk(k, dim=1).values.sum(dim=1)
        agree5 = (dense.topk(top5, dim=1).indices.sort(dim=1).values
                  == rebuilt.topk(top5, dim=1).indices.sort(dim=1).values).all(dim=1)
        agree1 = dense.argmax(dim=1) == rebuilt.argmax(dim=1)
        print(f"| {k} | {kl(dense, rebuilt, 1).mean():.4f} | {kl(dense, rebuilt, 4).mean():.4f} | "
              f"{mass.mean():.3f} | {agree5.float().mean():.3f} | {agree1.float().mean():.3f} |", flush=True)


if __name__ == "__main__":
    main()
