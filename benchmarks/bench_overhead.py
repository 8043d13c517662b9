"""The trainer against the loop a user writes by hand: same models, data, augmentation and steps.

The hand-written loop has the shape of RepDistiller's ``train_distill``: a
shuffled torchvision DataLoader with ``RandomCrop(28, padding=2)`` and a flip,
the teacher in this process under ``no_grad``, the student's forward and
backward, KL at T = 4, SGD. UNIX's hand loop adds the no-grad uncertainty pass,
the sort and the mixing in plain torch. Each arm runs in its own process,
``python -m student_trainer`` exactly as a user types it; arms alternate, and
every figure is the median of the repeats. The trainer's loop time is its wall
time less its evaluation and checkpoint phases (the hand loop does neither);
process wall times, imports included, are printed beside.

    python benchmarks/bench_overhead.py                       # 200 steps, 3 repeats, every arm
    python benchmarks/bench_overhead.py --steps 100 --repeats 1 --arms kd

Needs Fashion-MNIST (``make data``) and the shipped resnet20 teacher.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "experiments" / "teachers" / "fashion-mnist-resnet20.pt"
# arm -> (method, teacher, extra trainer flags). On one machine the served teacher and the student share the
# cores: kd-grpc waits for each answer (--serial-teacher), kd-grpc-overlap runs both at once (the default,
# made for a teacher on another box), which here puts twice the threads on the same cores.
ARMS = {"ce": ("ce", None, []), "kd": ("kd", "local", []), "unix": ("unix", "local", []),
        "kd-grpc": ("kd", "grpc", ["--serial-teacher"]), "kd-grpc-overlap": ("kd", "grpc", [])}
TRAINER_PHASES = ("data", "uncertainty", "mixing", "teacher", "student")


# --- the loop a user writes by hand ------------------------------------------------------------------
def hand_loop(method: str, steps: int, batch: int, k: int, seed: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from common.data import build_dataset
    from common.foreign_checkpoints import model_from_file
    from common.models import build_model

    torch.manual_seed(seed)
    spec = build_dataset("fashion-mnist", augment=False)
    data = spec.train
    data.transform = transforms.Compose([transforms.RandomCrop(28, padding=2), transforms.RandomHorizontalFlip(),
                                         transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    student = build_model("resnet8", num_classes=10, in_channels=1)
    teacher = model_from_file(str(TEACHER)).model.eval() if method != "ce" else None
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    T = 4.0
    phases = dict.fromkeys(("data", "uncertainty", "teacher", "student"), 0.0)
    student.train()
    start = clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        phases[name] += now - clock
        clock = now

    batches = iter(loader)
    for _ in range(steps):
        images, labels = next(batches)
        lap("data")
        if method == "unix":  # the k most uncertain, mixed with a partner (the more certain, the more mixed)
            with torch.no_grad():
                probs = F.softmax(student(images), dim=1)
                entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
                order = entropy.argsort(descending=True)
                images, labels = images[order], labels[order]
                rank = torch.arange(len(images), dtype=torch.float32)
                strength = torch.sigmoid(10.0 * (rank - 32) / len(images)) * torch.rand(()).item()
                partner = torch.randperm(len(images))
                mixed = (1 - strength)[:, None, None, None] * images + strength[:, None, None, None] * images[partner]
                images, labels = mixed[:k], labels[:k]
            lap("uncertainty")
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(images)
            lap("teacher")
        logits = student(images)
        if teacher is None:
            loss = F.cross_entropy(logits, labels)
        else:
            loss = F.kl_div(F.log_softmax(logits / T, dim=1), F.log_softmax(teacher_logits / T, dim=1),
                            reduction="batchmean", log_target=True) * T * T
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lap("student")
    return {"loop_seconds": time.perf_counter() - start, "phases": phases}


# --- the trainer, as a user types it -----------------------------------------------------------------
def trainer_flags(method: str, teacher_url: str | None, steps: int, batch: int, k: int, seed: int) -> list[str]:
    flags = ["--method", method, "--dataset", "fashion-mnist", "--arch", "resnet8", "--epochs", "1",
             "--max-steps", str(steps), "--batch-size", str(batch), "--workers", "0", "--test-size", "256",
             "--milestones", "", "--seed", str(seed), "--no-tensorboard", "--no-progress", "--log-level", "WARNING"]
    if method == "unix":
        flags += ["--k", str(k)]
    return flags + (["--teacher-url", teacher_url] if teacher_url else [])


def run_trainer(flags: list[str], out: Path) -> dict:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "student_trainer", *flags, "--out", str(out)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    process = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    split = summary["time_split"]
    loop = summary["wall_seconds"] - split.get("eval", 0.0) - split.get("checkpoint", 0.0)
    return {"loop_seconds": loop, "process_seconds": process,
            "phases": {name: split.get(name, 0.0) for name in TRAINER_PHASES}}


def run_hand(method: str, args) -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--hand", method, "--steps", str(args.steps),
                          "--batch-size", str(args.batch_size), "--k", str(args.k)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result | {"process_seconds": time.perf_counter() - start}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--k", type=int, default=48)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    p.add_argument("--hand", choices=("ce", "kd", "unix"), help=argparse.SUPPRESS)  # one hand-loop process
    args = p.parse_args(argv)
    if args.hand:
        print(json.dumps(hand_loop(args.hand, args.steps, args.batch_size, args.k, seed=0)))
        return
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        p.error(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    from common.launch import served_teacher

    results: dict[str, dict[str, list[dict]]] = {a: {"hand": [], "trainer": []} for a in arms}
    with tempfile.TemporaryDirectory() as tmp, served_teacher("--checkpoint", str(TEACHER)) as (_, port):
        urls = {"local": f"local:{TEACHER}", "grpc": f"grpc://127.0.0.1:{port}", None: None}
        for repeat in range(args.repeats):
            for arm in arms:
                method, teacher, extra = ARMS[arm]
                results[arm]["hand"].append(run_hand(method, args))
                flags = [*trainer_flags(method, urls[teacher], args.steps, args.batch_size, args.k, seed=0), *extra]
                results[arm]["trainer"].append(run_trainer(flags, Path(tmp) / f"{arm}-{repeat}"))
                print(f"repeat {repeat + 1}/{args.repeats} {arm}: hand {results[arm]['hand'][-1]['loop_seconds']:.1f} s, "
                      f"trainer {results[arm]['trainer'][-1]['loop_seconds']:.1f} s", flush=True)
    print(f"\n{args.steps} steps of batch {args.batch_size}, resnet20 teacher -> resnet8 student, Fashion-MNIST, "
          f"--workers 0; median of {args.repeats}")
    print("| arm | hand loop (s) | trainer (s) | trainer / hand | process: hand / trainer (s) | "
          "trainer phases: data / uncertainty+mixing / teacher / student (s) | hand phases: data / uncertainty / "
          "teacher / student (s) |")
    print("|---|---|---|---|---|---|---|")
    for arm in arms:
        hand, trainer = results[arm]["hand"], results[arm]["trainer"]
        med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
        phase = lambda runs, name: statistics.median(r["phases"].get(name, 0.0) for r in runs)  # noqa: E731
        h, t = med(hand, "loop_seconds"), med(trainer, "loop_seconds")
        print(f"| {arm} | {h:.2f} | {t:.2f} | {t / h:.2f} | {med(hand, 'process_seconds'):.1f} / "
              f"{med(trainer, 'process_seconds'):.1f} | {phase(trainer, 'data'):.2f} / "
              f"{phase(trainer, 'uncertainty') + phase(trainer, 'mixing'):.2f} / {phase(trainer, 'teacher'):.2f} / "
              f"{phase(trainer, 'student'):.2f} | {phase(hand, 'data'):.2f} / {phase(hand, 'uncertainty'):.2f} / "
              f"{phase(hand, 'teacher'):.2f} / {phase(hand, 'student'):.2f} |")
    print("(the kd-grpc arms' hand loop has its teacher in-process: the served teacher is compared with that)")


if __name__ == "__main__":
    main()
