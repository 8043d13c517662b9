"""python -m student_trainer: train a student with ce, kd or unix against a teacher URL."""
from __future__ import annotations

import argparse
import logging

from common.cli_errors import one_line_errors, parse_shape
from common.codec import WIRE_DTYPES
from student_trainer.methods import METHODS
from student_trainer.uncertainty import UNCERTAINTY


def _milestones(text: str) -> list[int]:
    try:
        return [int(m) for m in text.replace(",", " ").split()] if text.strip() else []
    except ValueError:
        raise argparse.ArgumentTypeError(f"milestones are epochs like 150,180,210, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m student_trainer", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m = p.add_argument_group("method")
    m.add_argument("--method", choices=sorted(METHODS), default="unix")
    m.add_argument("--teacher-url", help="grpc://HOST:PORT, grpcs://HOST:PORT, triton://HOST:PORT/MODEL "
                   "or local:CHECKPOINT (not needed for ce)")
    m.add_argument("--k", type=int, default=48, help="images per batch sent to the teacher (unix)")
    m.add_argument("--b", type=float, default=32, help="rank where mixing reaches half strength (unix)")
    m.add_argument("--w", type=float, default=10.0, help="sharpness of the mixing sigmoid (unix)")
    m.add_argument("--selection", choices=sorted(UNCERTAINTY), default="entropy")
    m.add_argument("--uncertainty-bn", choices=("batch", "train", "eval"), default="batch",
                   help="BatchNorm in the no-grad uncertainty pass (see README)")
    m.add_argument("--T", type=float, default=4.0, help="distillation temperature")
    m.add_argument("--ce-weight", type=float, default=0.0)
    m.add_argument("--kd-weight", type=float, default=1.0)
    m.add_argument("--wire-dtype", choices=sorted(WIRE_DTYPES), default="float16",
                   help="dtype of the images on the wire")
    m.add_argument("--teacher-timeout", type=float, default=60.0, help="seconds per teacher call")
    m.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to wait for the teacher at start")
    m.add_argument("--teacher-max-wait", type=float, default=600.0,
                   help="seconds a teacher call keeps retrying while the teacher is unreachable, then give up")
    m.add_argument("--tls-ca", help="PEM CA certificate to check a grpcs:// teacher (default: system roots)")
    m.add_argument("--token-file", help="file holding the teacher's shared token (sent as a bearer token)")
    m.add_argument("--client-id", help="name in the teacher's metrics (default: a random uuid)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="synthetic")
    d.add_argument("--data-root", default=None)
    d.add_argument("--download", action="store_true", help="let torchvision download CIFAR")
    d.add_argument("--train-size", type=int, default=None, help="use a seeded subset of the train split")
    d.add_argument("--test-size", type=int, default=None, help="use a seeded subset of the test split")
    d.add_argument("--image-shape", type=parse_shape, default=None, metavar="C,H,W", help="synthetic only")
    d.add_argument("--num-classes", type=int, default=None, help="synthetic only")
    d.add_argument("--data-seed", type=int, default=0)
    d.add_argument("--no-augment", action="store_true")
    d.add_argument("--workers", type=int, default=2, help="data loader processes")
    d.add_argument("--drop-last", action="store_true", help="skip the last partial batch of each epoch")
    o = p.add_argument_group("model and optimiser")
    o.add_argument("--arch", default="resnet8")
    o.add_argument("--epochs", type=int, default=240)
    o.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all")
    o.add_argument("--batch-size", type=int, default=64)
    o.add_argument("--lr", type=float, default=0.05)
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--nesterov", action="store_true")
    o.add_argument("--weight-decay", type=float, default=5e-4)
    o.add_argument("--milestones", type=_milestones, default=[150, 180, 210], help="epochs, comma-separated")
    o.add_argument("--lr-gamma", type=float, default=0.1)
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--out", default="runs/student", help="folder for checkpoints and summary.json")
    r.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (its last.pt)")
    r.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also write last.pt every STEPS steps (0: only at epoch ends)")
    r.add_argument("--deterministic", action="store_true", help="torch deterministic algorithms")
    r.add_argument("--log-every", type=int, default=20, metavar="STEPS", help="TensorBoard step interval")
    r.add_argument("--no-tensorboard", action="store_true")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--log-level", default="INFO")
    return p


def validate(args) -> None:
    """Flag combinations argparse cannot check, each as one readable line."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.method == "unix" and not 1 <= args.k <= args.batch_size:
        raise ValueError(f"--k must be between 1 and --batch-size {args.batch_size}, got {args.k}")
    if args.w < 0:
        raise ValueError(f"--w must be >= 0, got {args.w}")
    if args.T <= 0:
        raise ValueError(f"--T must be > 0, got {args.T}")
    if args.epochs < 1 or (args.max_steps is not None and args.max_steps < 1):
        raise ValueError("--epochs and --max-steps must be at least 1")
    if args.log_every < 1 or args.checkpoint_every < 0:
        raise ValueError("--log-every must be at least 1 and --checkpoint-every at least 0")


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    import grpc

    with one_line_errors("student_trainer"):
        validate(args)
        from student_trainer.train import run

        try:
            return run(args)
        except grpc.RpcError as e:  # the teacher refused or vanished: say so in one line
            raise ConnectionError(f"teacher call failed: {e.code().name}: {e.details()}") from None
