"""A replayed step against a CE step on an ImageNet-like JPEG folder at 224 px, with the real trainer.

    python benchmarks/bench_folder_replay.py --root /tmp/imagenet-like --train-size 640 --rounds 2

Replay's promise is that once every view is stored, a KD step costs what a CE step costs: the teacher is
not asked, the stored answer is read instead, and the stored view is rendered in the loader processes. First
one run of ``--query replay --loss kd --views 1`` against a small random teacher on a server on this machine
stores a view of every image (one epoch); the server is then stopped. Each round then runs, with the same
flags and data, in alternating order: ``--method ce`` for 2 epochs, and the replay run again for 2 epochs
on that store with ``--teacher-id`` (no teacher at all: the second student of a sweep). The figure is the
ratio of the second epochs' seconds, paired by round (the first epoch of each warms the page cache and the
allocator). Also printed: the stored bytes per view.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def start_teacher(arch: str, classes: int, workdir: Path) -> tuple[subprocess.Popen, str]:
    port_file = workdir / "port"
    log = (workdir / "teacher.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "teacher_server", "--arch", arch, "--num-classes", str(classes),
                             "--input-shape", "3,224,224", "--port", "0", "--port-file", str(port_file)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not port_file.is_file() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the teacher did not start; see {workdir / 'teacher.log'}")
        time.sleep(0.2)
    return proc, f"grpc://127.0.0.1:{port_file.read_text().strip()}"


def run(flags: list[str], out: Path) -> list[dict]:
    """One trainer run; its per-epoch metrics."""
    done = subprocess.run([sys.executable, "-m", "student_trainer", *flags, "--out", str(out), "--no-progress",
                           "--no-tensorboard", "--log-level", "WARNING"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"trainer failed: {done.stderr.strip()[-2000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "imagenet-like"))
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--train-size", type=int, default=640, help="training images a run uses (a seeded subset)")
    p.add_argument("--student", default="torchvision.mobilenet_v3_small")
    p.add_argument("--teacher", default="torchvision.mobilenet_v3_small")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)

    from imagenet_like import make_folder

    make_folder(args.root, classes=args.classes, per_class=args.per_class, val_per_class=1)
    data = ["--dataset", f"folder:{args.root}", "--image-size", "224", "--mean", "0.485,0.456,0.406",
            "--std", "0.229,0.224,0.225", "--train-size", str(args.train_size), "--test-size", "32",
            "--arch", args.student, "--batch-size", str(args.batch_size), "--workers", str(args.workers),
            "--epochs", "2", "--seed", "0"]
    seconds: dict[str, list[float]] = {"ce": [], "replay": []}
    per_view = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = work / "store"
        replay_flags = [*data, "--query", "replay", "--loss", "kd", "--views", "1", "--replay-store", f"lmdb:{store}"]
        teacher, url = start_teacher(args.teacher, args.classes, work)
        try:
            fill = run([*replay_flags, "--teacher-url", url, "--epochs", "1"], work / "fill")
        finally:
            teacher.terminate()
            teacher.wait(60)
        per_view.append(store_bytes(store) / fill[0]["teacher_images"])
        teacher_id = json.loads((work / "fill" / "summary.json").read_text())["teacher_id"]
        for r in range(args.rounds):
            arms = {"ce": lambda: run([*data, "--method", "ce"], work / f"ce{r}"),
                    "replay": lambda: run([*replay_flags, "--teacher-id", teacher_id], work / f"replay{r}")}
            order = ["ce", "replay"] if r % 2 == 0 else ["replay", "ce"]   # neither arm always runs first
            done = {name: arms[name]() for name in order}
            ce, replay = done["ce"], done["replay"]
            assert replay[-1]["teacher_images"] == 0, replay[-1]  # every view replayed
            seconds["ce"].append(ce[1]["epoch_seconds"])
            seconds["replay"].append(replay[1]["epoch_seconds"])
            print(f"round {r}: ce {ce[1]['epoch_seconds']:.2f} s, replay {replay[1]['epoch_seconds']:.2f} s "
                  f"(epoch 2)", flush=True)
    ce, replay = statistics.median(seconds["ce"]), statistics.median(seconds["replay"])
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs; {' '.join(sys.argv)}")
    print(f"epoch-2 seconds by round: CE {seconds['ce']}, replay {seconds['replay']}")
    ratios = [b / a for a, b in zip(seconds["ce"], seconds["replay"])]
    print(f"replay / CE by round (paired): {[round(x, 3) for x in ratios]}; median {statistics.median(ratios):.2f}")
    print("| arm | epoch-2 seconds (median) | per step | ratio to CE |\n|---|---|---|---|")
    steps = args.train_size // args.batch_size
    print(f"| CE | {ce:.2f} | {ce / steps * 1e3:.0f} ms | 1.00 |")
    print(f"| replay V=1, every view stored (--teacher-id) | {replay:.2f} | {replay / steps * 1e3:.0f} ms | {replay / ce:.2f} |")
    print(f"\nstored bytes per view (LMDB files / views stored, {args.classes} classes): {statistics.median(per_view):,.0f}")


if __name__ == "__main__":
    main()
