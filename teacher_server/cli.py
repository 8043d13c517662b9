"""python -m teacher_server: serve a teacher checkpoint (or a random teacher) over gRPC or on Triton."""
from __future__ import annotations

import argparse
import logging

from common.cli_errors import one_line_errors, parse_numbers, parse_shape, renamed_flag
from teacher_server.backends import BACKENDS, add_backend_arguments, serve

log = logging.getLogger("teacher_server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m teacher_server", description=__doc__)
    src = p.add_argument_group("teacher")
    src.add_argument("--checkpoint", help="a checkpoint written by the student trainer (--method ce), or "
                     "another project's weights: a state dict (bare, or under 'model', 'state_dict' or 'net': "
                     "timm's .pth.tar, torchvision's, the KD projects') or a .safetensors file (the Hugging "
                     "Face hub's); give --arch and --num-classes with it; read weights-only")
    src.add_argument("--arch", help="with --checkpoint: the network of a state dict from another project "
                     "(optional for ours, checked against the file); alone: serve a randomly initialised "
                     "ARCH (smoke tests)")
    src.add_argument("--use-ema", action="store_true",
                     help="load the EMA weights of a file that has them (timm's state_dict_ema, DeiT's model_ema) "
                     "instead of the trained ones")
    src.add_argument("--num-classes", type=int, default=None,
                     help="classes (needed for another project's file; default 10 for a random teacher)")
    src.add_argument("--input-shape", type=parse_shape, default=None, metavar="C,H,W",
                     help="image shape (default: the checkpoint's if ours, else 3,32,32)")
    src.add_argument("--seed", type=int, default=0, help="initialisation seed of a random teacher")
    data = p.add_argument_group("data set (gRPC): render trainers' view recipes (--send recipes) from its training "
                                "split, built as the trainer builds it")
    data.add_argument("--dataset", help="the trainer's --dataset name (fashion-mnist, cifar10, cifar100, synthetic, "
                      "imagenet, folder:ROOT); a folder is read at the teacher's input size")
    data.add_argument("--data-root", help="the data set's folder, as the trainer's --data-root")
    data.add_argument("--train-size", type=int, help="synthetic only: the images it generates (the trainer's "
                      "--train-size; a subset of a real set renders from the whole split)")
    data.add_argument("--data-seed", type=int, default=0, help="the trainer's --data-seed (synthetic; the sample a "
                      "folder's normalisation is measured on)")
    data.add_argument("--mean", type=parse_numbers, default=None, metavar="R,G,B",
                      help="folder: the trainer's --mean (with --std; default: measured as the trainer measures it)")
    data.add_argument("--std", type=parse_numbers, default=None, metavar="R,G,B", help="folder: the trainer's --std")
    data.add_argument("--no-augment", action="store_true", help="the trainer's --no-augment")
    data.add_argument("--recipe-store", metavar="URL", help="the recipe store: keep the answers to view recipes "
                      "here, read by recipe, and give them again with no forward: lmdb:PATH (or a bare directory) on "
                      "this host, redis://HOST:PORT/DB shared. Not the trainer's --replay-store (views per image)")
    data.add_argument("--answer-store", nargs="?", help=argparse.SUPPRESS,
                      action=renamed_flag("--recipe-store", "the answers this server keeps per view recipe"))
    run = p.add_argument_group("serving")
    run.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    run.add_argument("--port", type=int, default=None,
                     help="0 picks a free port (default: 50051 for grpc, 8001 for triton)")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    run.add_argument("--half", action="store_true", help="float16 compute (CUDA only)")
    run.add_argument("--max-batch", type=int, default=256)
    run.add_argument("--workers", type=int, default=8, help="gRPC worker threads")
    run.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/inf pixels")
    run.add_argument("--port-file", help="write the bound port here once serving (for scripts)")
    life = p.add_argument_group("security and operations (gRPC)")
    life.add_argument("--grace", type=float, default=30.0,
                      help="seconds that calls in flight get to finish after SIGTERM")
    life.add_argument("--tls-cert", help="serve over TLS with this PEM certificate (chain)")
    life.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    life.add_argument("--token-file", help="require 'authorization: Bearer TOKEN' (TOKEN read from this file)")
    life.add_argument("--metrics-port", type=int, help="serve Prometheus metrics over HTTP here (0: any free port)")
    life.add_argument("--metrics-host", default="127.0.0.1", help="bind address of the metrics endpoint")
    life.add_argument("--stats-file", help="write the final counters here as JSON on shutdown")
    run.add_argument("--log-level", default="INFO")
    add_backend_arguments(p)
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with one_line_errors("teacher_server"):
        if not args.checkpoint and not args.arch:
            raise ValueError("give exactly one of --checkpoint PATH or --arch NAME (alone: a random teacher; "
                             "with --checkpoint: the network of another project's state dict)")
        if args.dataset and not BACKENDS[args.backend].renders_recipes:
            raise ValueError(f"--dataset: --backend {args.backend} takes images only (view recipes are rendered by "
                             f"--backend {', '.join(n for n, b in BACKENDS.items() if b.renders_recipes)})")
        if args.max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {args.max_batch}")
        if (args.mean is None) != (args.std is None):
            raise ValueError("give --mean and --std together (or neither: a folder's are measured)")
        from common.teacher_model import load_teacher

        teacher = load_teacher(args.checkpoint, arch=args.arch, num_classes=args.num_classes,
                               input_shape=args.input_shape, seed=args.seed,
                               device=args.device, half=args.half, use_ema=args.use_ema)
        serve(teacher, args)  # BACKENDS[--backend], until SIGTERM/SIGINT
