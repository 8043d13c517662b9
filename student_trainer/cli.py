"""python -m student_trainer: train a student with ce, kd or unix against a teacher URL.

``torchrun --nproc_per_node=P -m student_trainer ...`` trains the same student with P processes
(DistributedDataParallel; --batch-size and --k stay the global figures)."""
from __future__ import annotations

import argparse
import logging

from common.cli_errors import one_line_errors, parse_numbers, parse_shape, renamed_flag
from common.codec import WIRE_DTYPES
from student_trainer.distill import LOSSES, loss_classes
from student_trainer.engine.data_order import DRAWS
from student_trainer.engine.distributed import check_world, env_info
from student_trainer.flags import add_config_flags, config_from_flags
from student_trainer.method import SHORTHANDS, Method
from student_trainer.run_config import DataConfig, RunConfig, ScheduleConfig, TeacherConfig, TrainConfig
from student_trainer.query import POLICIES, PolicyConfig, SubsetConfig
from student_trainer.teachers.options import DEFAULTS as TEACHER
from student_trainer.teachers.options import SENDS


def _milestones(text: str) -> list[int]:
    try:
        return [int(m) for m in text.replace(",", " ").split()] if text.strip() else []
    except ValueError:
        raise argparse.ArgumentTypeError(f"milestones are epochs like 150,180,210, got {text!r}") from None


def prefetch_depth(text: str) -> int | None:
    """``--prefetch``: a number of steps, or ``auto`` (None)."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a number of steps or auto, not {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m student_trainer", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m = p.add_argument_group("method: which images the teacher sees (--query) and the loss on its answers (--loss)")
    m.add_argument("--method", choices=sorted(SHORTHANDS), default=None,
                   help="shorthand for a (--query, --loss) pair: "
                        + ", ".join(f"{k} = {q} + {lo}" for k, (q, lo) in SHORTHANDS.items())
                        + f" (default: unix)")
    m.add_argument("--query", choices=sorted(POLICIES), default=None,
                   help="; ".join(f"{name}: {cls.about}" for name, cls in POLICIES.items()))
    m.add_argument("--loss", default=None, metavar="LOSS",
                   help="distillation loss, or kd+LOSS for KD plus one feature loss: "
                        + "; ".join(f"{name}: {cls.about}" for name, cls in LOSSES.items()))
    m.add_argument("--feature-pairs", default=None, metavar="S:T,...",
                   help="student:teacher feature names, e.g. stage2:stage2,stage3:stage3 (default: per loss)")
    m.add_argument("--prefetch", type=prefetch_depth, default=None, metavar="D",
                   help="choose and send the next D batches while the student trains on this one (UNIX then "
                        "scores them with weights up to D steps old). Default auto: as many as hide the teacher "
                        "where that changes no result (every policy but unix and unix-nomix, whose choice reads the "
                        "weights: 0 for them); see docs/pipeline.md")
    m.add_argument("--serial-teacher", action="store_true",
                   help="wait for the teacher before the student's forward (no overlap; same result, slower)")
    m.add_argument("--teacher-url", help="grpc://HOST:PORT, grpcs://HOST:PORT, triton://HOST:PORT/MODEL "
                   "or local:CHECKPOINT (not needed for ce)")
    m.add_argument("--replay-store", metavar="URL",
                   help="the replay store: where --query replay keeps each image's views with the teacher's "
                   "answers, read by sample: a folder (an embedded LMDB store, lmdb:PATH) or redis://HOST:PORT/DB "
                   "(a store several hosts share). Not the server's --recipe-store, which keeps answers by recipe")
    m.add_argument("--answer-store", nargs="?", help=argparse.SUPPRESS,
                   action=renamed_flag("--replay-store", "the views each image keeps for --query replay"))
    m.add_argument("--teacher-id", metavar="SHA256",
                   help="with --query replay and no --teacher-url: the teacher whose stored answers to train "
                   "on (its weights' sha256, as a run with the teacher logs it)")
    m.add_argument("--k", type=int, default=SubsetConfig.k,
                   help="images per batch sent to the teacher (all but --query all)")
    m.add_argument("--ce-weight", type=float, default=None,
                   help="weight of cross-entropy on the (mixed) labels (default: 0 with a teacher, 1 without)")
    added: set[str] = set()
    q = p.add_argument_group("query policy options")
    for policy in POLICIES.values():
        add_config_flags(q, policy.config_type, added)
    for loss in LOSSES.values():
        add_config_flags(p.add_argument_group(f"loss {loss.name}", loss.about), loss.config_type, added)
    m.add_argument("--answer-topk", type=int, default=0, metavar="K",
                   help="the teacher answers each image with its K largest logits and the log-mean-exp of the "
                   "rest (4K + 2 bytes on the wire and in the replay store, not 4 a class), which the losses "
                   "rebuild into C logits (TinyViT's even spread of the rest); logits only; 0: dense")
    m.add_argument("--wire-dtype", choices=sorted(WIRE_DTYPES), default=TEACHER.wire_dtype,
                   help="dtype of the images on the wire")
    m.add_argument("--send", choices=SENDS, default=TEACHER.send,
                   help="what a teacher image travels as: its pixels, or its view recipe (104 bytes: sample, crop box, "
                   "flip, mixing partner), rendered by a server started with the same --dataset (grpc(s):// only; "
                   "needs --augment-draws batched)")
    m.add_argument("--teacher-timeout", type=float, default=TEACHER.timeout, help="seconds per teacher call")
    m.add_argument("--connect-timeout", type=float, default=TEACHER.connect_timeout,
                   help="seconds to wait for the teacher at start")
    m.add_argument("--teacher-max-wait", type=float, default=TEACHER.max_wait,
                   help="seconds a teacher call keeps retrying while the teacher is unreachable, then give up "
                   "(grpc://, grpcs://, triton://)")
    m.add_argument("--tls-ca", help="PEM CA certificate to check a grpcs:// teacher (default: system roots; "
                   "grpcs:// only)")
    m.add_argument("--token-file", help="file holding the teacher's token: grpc(s)://, sent as a bearer token; "
                   "triton://, Triton's access token, for its statistics endpoint")
    m.add_argument("--client-id", help="name in the teacher's metrics (default: a random uuid; grpc(s):// only)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=None,
                   help="a registered data set (common.data.list_datasets()), or NAME:ROOT with its folder, e.g. "
                   "folder:ROOT for any ROOT/train/CLASS/* and ROOT/val/CLASS/* images (ImageFolder's layout); "
                   "default: the one the teacher says it was trained on, else synthetic")
    d.add_argument("--data-root", default=None, help="the data set's folder (or give it as --dataset NAME:ROOT)")
    d.add_argument("--download", action="store_true", help="let torchvision download CIFAR")
    d.add_argument("--train-size", type=int, default=None, help="use a seeded subset of the train split")
    d.add_argument("--test-size", type=int, default=None, help="use a seeded subset of the test split")
    d.add_argument("--image-shape", type=parse_shape, default=None, metavar="C,H,W", help="synthetic only")
    d.add_argument("--num-classes", type=int, default=None, help="synthetic only")
    d.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="folder, imagenet: train and test on N x N crops (default 224)")
    d.add_argument("--mean", type=parse_numbers, default=None, metavar="R,G,B",
                   help="folder: the normalisation's mean (with --std; default: measured once on the training "
                   "split, saved in OUT/data.json and reused by --resume)")
    d.add_argument("--std", type=parse_numbers, default=None, metavar="R,G,B", help="folder: see --mean")
    d.add_argument("--data-seed", type=int, default=0)
    d.add_argument("--no-augment", action="store_true")
    d.add_argument("--augment-draws", choices=DRAWS, default=DRAWS[0],
                   help="batched: each view a recipe hashed from (seed, epoch, index), a batch rendered at once "
                        "from the images in memory (Fashion-MNIST, CIFAR, synthetic); per-item: the data set's "
                        "transforms image by image under a seed each (any data set; the draws of earlier "
                        "releases). Data sets read from files always draw per item")
    d.add_argument("--workers", type=int, default=2, help="data loader processes")
    d.add_argument("--drop-last", action="store_true", help="skip the last partial batch of each epoch")
    o = p.add_argument_group("model and optimiser")
    o.add_argument("--arch", default="resnet8")
    o.add_argument("--epochs", type=int, default=240)
    o.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all")
    o.add_argument("--budget", type=float, default=1.0, metavar="F",
                   help="train F of the steps --epochs would take, with --milestones scaled by F: the same "
                        "schedule shape on less compute (a compute-matched baseline)")
    o.add_argument("--batch-size", type=int, default=PolicyConfig.batch_size)
    o.add_argument("--lr", type=float, default=0.05)
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--nesterov", action="store_true")
    o.add_argument("--weight-decay", type=float, default=5e-4)
    o.add_argument("--milestones", type=_milestones, default=[150, 180, 210],
                   help="epochs after which the rate is multiplied by --lr-gamma, comma-separated")
    o.add_argument("--lr-gamma", type=float, default=0.1)
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, default=PolicyConfig.seed)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch's intra-op threads in this process (default: torch's own, one per core); a local: "
                        "teacher computes in the same threads, between the student's passes, never beside them")
    r.add_argument("--out", default="runs/student", help="folder for checkpoints and summary.json; one that "
                   "holds a run already is refused unless --resume continues it or --overwrite replaces it")
    again = r.add_mutually_exclusive_group()
    again.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (its last.pt)")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out: remove its checkpoints, metrics, summary and TensorBoard "
                            "events first")
    r.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also write last.pt every STEPS steps (0: only at epoch ends)")
    r.add_argument("--deterministic", action="store_true", help="torch deterministic algorithms")
    r.add_argument("--log-every", type=int, default=20, metavar="STEPS", help="TensorBoard step interval")
    r.add_argument("--eval-every", type=int, default=1, metavar="E",
                   help="evaluate on the test split after every E-th epoch (and always after the last)")
    r.add_argument("--no-tensorboard", action="store_true")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--log-level", default="INFO")
    r.add_argument("--record-indices", action="store_true",
                   help="append each step's trained data-set indices to OUT/indices.rank<R>.jsonl (one line a "
                        "step and process: checks the data order, e.g. that P processes train the images one does)")
    return p


def resolve_method(args) -> None:
    """--method is a shorthand for --query and --loss; args.method becomes the run's label either way."""
    if args.method and (args.query or args.loss):
        raise ValueError("give --method alone, or --query and --loss; not both")
    if args.method or not (args.query or args.loss):
        args.method = args.method or "unix"
        args.query, args.loss = SHORTHANDS[args.method]
        return
    args.query, args.loss = args.query or "all", args.loss or "kd"


def method_from_flags(args) -> Method:
    """The flags' method as a typed value: the policy's config and each loss's, from their own flags."""
    resolve_method(args)
    method = Method(args.query, config_from_flags(POLICIES[args.query].config_type, args), args.loss,
                    {cls.name: config_from_flags(cls.config_type, args) for cls in loss_classes(args.loss)},
                    feature_pairs=args.feature_pairs, ce_weight=args.ce_weight, answer_topk=args.answer_topk)
    args.method = method.label
    return method


def teacher_config(args) -> TeacherConfig:
    return TeacherConfig(url=args.teacher_url, replay_store=args.replay_store, stored_id=args.teacher_id,
                         wire_dtype=args.wire_dtype, send=args.send, timeout=args.teacher_timeout,
                         connect_timeout=args.connect_timeout, max_wait=args.teacher_max_wait, tls_ca=args.tls_ca,
                         token_file=args.token_file, client_id=args.client_id, prefetch=args.prefetch,
                         serial=args.serial_teacher)


def train_config(args, method: Method) -> TrainConfig:
    """The flags as the engine reads them: typed sections, nothing of argparse."""
    data = DataConfig(dataset=args.dataset, root=args.data_root, download=args.download, train_size=args.train_size,
                      test_size=args.test_size, image_shape=args.image_shape, num_classes=args.num_classes,
                      image_size=args.image_size, mean=args.mean, std=args.std, seed=args.data_seed,
                      augment=not args.no_augment, draws=args.augment_draws, workers=args.workers,
                      drop_last=args.drop_last)
    schedule = ScheduleConfig(arch=args.arch, epochs=args.epochs, max_steps=args.max_steps, budget=args.budget,
                              lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                              weight_decay=args.weight_decay, milestones=tuple(args.milestones),
                              lr_gamma=args.lr_gamma)
    run = RunConfig(out=args.out, resume=args.resume, overwrite=args.overwrite, seed=args.seed, device=args.device,
                    threads=args.threads, deterministic=args.deterministic, checkpoint_every=args.checkpoint_every,
                    eval_every=args.eval_every, log_every=args.log_every, tensorboard=not args.no_tensorboard,
                    progress=not args.no_progress, record_indices=args.record_indices)
    return TrainConfig(method, teacher_config(args), data, schedule, run, flags=dict(vars(args)))


def validate(args, world_size: int = 1) -> Method:
    """Flag combinations argparse cannot check, each as one readable line; ``world_size``: processes
    torchrun started for this student. Returns the run's method, built from the flags."""
    if (args.mean is None) != (args.std is None):
        raise ValueError("give --mean and --std together (or neither: a folder's are measured)")
    method = method_from_flags(args)
    if args.prefetch is not None and args.prefetch < 0:
        raise ValueError(f"--prefetch must be >= 0, got {args.prefetch}")
    if args.prefetch and args.serial_teacher:
        raise ValueError("--prefetch overlaps the teacher with training; --serial-teacher turns overlap off: "
                         "choose one")
    policy = method.policy_type
    if policy.needs_store and not args.replay_store:
        raise ValueError(f"--query {args.query} needs --replay-store (a folder for an embedded LMDB store, or "
                         "redis://HOST:PORT/DB)")
    if args.replay_store and not policy.needs_store:
        raise ValueError(f"--replay-store is read by --query {', '.join(n for n, p in POLICIES.items() if p.needs_store)}"
                         f", not by --query {args.query}")
    if args.teacher_id and (args.teacher_url or not policy.needs_store):
        raise ValueError("--teacher-id names a stored teacher for --query replay without --teacher-url")
    if args.teacher_id and args.send != TEACHER.send:
        raise ValueError(f"--send {args.send} is how images travel to a live teacher; --teacher-id trains on "
                         "stored answers alone")
    if args.epochs < 1 or (args.max_steps is not None and args.max_steps < 1):
        raise ValueError("--epochs and --max-steps must be at least 1")
    if not 0 < args.budget <= 1:
        raise ValueError(f"--budget is a fraction of the schedule's steps, in (0, 1]; got {args.budget}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.eval_every < 1:
        raise ValueError(f"--eval-every must be at least 1, got {args.eval_every}")
    if args.log_every < 1 or args.checkpoint_every < 0:
        raise ValueError("--log-every must be at least 1 and --checkpoint-every at least 0")
    check_world(method, args.client_id, world_size)
    return method


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    world = env_info()  # torchrun's RANK / WORLD_SIZE, or rank 0 of 1
    # Under torchrun rank 0 logs as one process would; the others only warnings and errors, with their rank.
    logging.basicConfig(level=args.log_level.upper() if world.is_main else "WARNING",
                        format="%(asctime)s %(levelname)s " + (f"[rank {world.rank}] " if world.enabled else "")
                        + "%(message)s")
    import grpc

    # The flags are the same on every rank, and so is what is wrong with them: rank 0 alone says it.
    with one_line_errors("student_trainer", quiet=not world.is_main):
        method = validate(args, world.world_size)
    with one_line_errors(f"student_trainer[rank {world.rank}]" if world.enabled else "student_trainer"):
        from student_trainer.engine.loop import main as train

        try:
            return train(train_config(args, method))
        except grpc.RpcError as e:  # the teacher refused or vanished: say so in one line
            raise ConnectionError(f"teacher call failed: {e.code().name}: {e.details()}") from None
