"""The training loop: data, student, method, teacher; evaluation, checkpoints, summary.

Read top to bottom like torchvision's reference ``train.py``: ``run`` builds
everything from the parsed flags, ``train_one_epoch`` and ``evaluate`` do the
work, ``write_summary`` reports it.
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.checkpoint import make_checkpoint, save_checkpoint
from common.data import build_dataset
from common.flops import backward_flops_per_image, forward_flops_per_image
from common.models import build_model
from student_trainer.accounting import WorkCounters, compute_flops, kd_flops
from student_trainer.methods import METHODS, MethodConfig
from student_trainer.summary import build_summary, format_summary
from student_trainer.teachers import connect

log = logging.getLogger("student_trainer")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return dev


def check_teacher_fits(info, spec) -> None:
    """A teacher for another data set gives silent garbage: refuse it up front."""
    if tuple(info.input_shape) != tuple(spec.input_shape) or info.num_classes != spec.num_classes:
        raise ValueError(
            f"teacher {info.model_name} takes {'x'.join(map(str, info.input_shape))} images in "
            f"{info.num_classes} classes, but {spec.name} has {'x'.join(map(str, spec.input_shape))} "
            f"in {spec.num_classes}")


@torch.no_grad()
def evaluate(model, loader, device) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = total = 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        correct += (model(images).argmax(dim=1) == labels).sum().item()
        total += labels.shape[0]
    model.train()
    return 100.0 * correct / max(total, 1)


def train_one_epoch(method, optimizer, loader, device, work: WorkCounters, *, epoch: int,
                    max_steps: int | None, progress: bool) -> dict:
    """One pass over ``loader`` (or until ``max_steps``); returns the epoch's mean loss parts."""
    method.student.train()
    sums: dict[str, float] = {}
    steps = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if progress else True,
               dynamic_ncols=True)
    for images, labels in bar:
        if max_steps is not None and work.steps >= max_steps:
            break
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        out = method.step(images, labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        work.add(images.shape[0], out)
        steps += 1
        sums["loss"] = sums.get("loss", 0.0) + out.loss.item()
        for name, value in out.parts.items():
            sums[name] = sums.get(name, 0.0) + value
        if steps % 10 == 0:
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{sums['loss'] / steps:.3f}",
                            img_s=f"{work.student_images / max(elapsed, 1e-9):.0f}",
                            teacher=f"{work.teacher_images / max(work.student_images, 1):.2f}")
    bar.close()
    return {name: value / max(steps, 1) for name, value in sums.items()} | {"steps": steps}


def _loaders(spec, args, device):
    g = torch.Generator().manual_seed(args.seed)
    common = dict(num_workers=args.workers, pin_memory=device.type == "cuda",
                  persistent_workers=args.workers > 0)
    train = DataLoader(spec.train, batch_size=args.batch_size, shuffle=True, generator=g,
                       drop_last=args.drop_last, **common)
    test = DataLoader(spec.test, batch_size=max(args.batch_size, 256), shuffle=False, **common)
    return train, test


def run(args) -> dict:
    """Train one student as the flags say; return (and write) the run's summary."""
    wall_start = time.perf_counter()
    seed_everything(args.seed)
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    spec = build_dataset(args.dataset, args.data_root, train_size=args.train_size, test_size=args.test_size,
                         image_shape=args.image_shape, num_classes=args.num_classes, seed=args.data_seed,
                         augment=not args.no_augment, download=args.download)
    student = build_model(args.arch, num_classes=spec.num_classes, in_channels=spec.input_shape[0]).to(device)
    method_cls = METHODS[args.method]
    teacher = None
    if method_cls.needs_teacher:
        if not args.teacher_url:
            raise ValueError(f"--method {args.method} needs --teacher-url (grpc://HOST:PORT or local:PATH)")
        teacher = connect(args.teacher_url, wire_dtype=args.wire_dtype, timeout=args.teacher_timeout,
                          connect_timeout=args.connect_timeout,
                          device=args.device if args.device != "auto" else str(device))
        check_teacher_fits(teacher.describe(), spec)
    cfg = MethodConfig(batch_size=args.batch_size, k=args.k, b=args.b, w=args.w, selection=args.selection,
                       T=args.T, ce_weight=args.ce_weight, kd_weight=args.kd_weight,
                       uncertainty_bn=args.uncertainty_bn, seed=args.seed)
    method = method_cls(student, teacher, cfg)

    optimizer = torch.optim.SGD(student.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=args.nesterov)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.milestones, gamma=args.lr_gamma)
    train_loader, test_loader = _loaders(spec, args, device)

    flops = {"student_forward": forward_flops_per_image(student, spec.input_shape),
             "student_backward": backward_flops_per_image(student, spec.input_shape),
             "teacher_forward": teacher.describe().flops_per_image if teacher else 0.0}
    server_start = teacher.server_stats() if teacher else None

    work = WorkCounters()
    best_top1, top1, epochs_run = -1.0, 0.0, 0
    meta = {"dataset": spec.name, "method": args.method, "seed": args.seed,
            "teacher": teacher.describe().model_name if teacher else None}
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")
    try:
        for epoch in range(1, args.epochs + 1):
            if args.max_steps is not None and work.steps >= args.max_steps:
                break
            epoch_start = time.perf_counter()
            parts = train_one_epoch(method, optimizer, train_loader, device, work, epoch=epoch,
                                    max_steps=args.max_steps, progress=not args.no_progress)
            scheduler.step()
            epochs_run = epoch
            top1 = evaluate(student, test_loader, device)
            record = {"epoch": epoch, "top1": top1, "lr": optimizer.param_groups[0]["lr"], **parts,
                      **work.as_dict(), "epoch_seconds": time.perf_counter() - epoch_start}
            if teacher:
                record |= {"teacher_" + k: v for k, v in teacher.counters.as_dict().items()}
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            log.info("epoch %d/%d  loss %.4f  top-1 %.2f%%  teacher images %d of %d  (%.1f s)",
                     epoch, args.epochs, parts.get("loss", float("nan")), top1, work.teacher_images,
                     work.student_images, record["epoch_seconds"])
            ckpt = make_checkpoint(student, arch=args.arch, num_classes=spec.num_classes,
                                   input_shape=spec.input_shape,
                                   meta=meta | {"epoch": epoch, "steps": work.steps, "top1": top1},
                                   optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                   counters=work.as_dict())
            save_checkpoint(ckpt, out / "last.pt")
            if top1 > best_top1:
                best_top1 = top1
                save_checkpoint(ckpt, out / "best.pt")
        server_end = teacher.server_stats() if teacher else None
    finally:
        if teacher:
            teacher.close()

    cost = compute_flops(work, flops["teacher_forward"], flops["student_forward"], flops["student_backward"])
    kd_cost = kd_flops(work, flops["teacher_forward"], flops["student_forward"], flops["student_backward"])
    summary = build_summary(args=args, spec=spec, work=work, top1=top1, best_top1=best_top1,
                            epochs=epochs_run, teacher=teacher, server_start=server_start,
                            server_end=server_end, flops=flops, cost=cost, kd_cost=kd_cost,
                            wall_seconds=time.perf_counter() - wall_start)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary))
    return summary
