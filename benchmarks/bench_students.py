"""Many students, one teacher: M real trainer processes against one teacher server process.

    python benchmarks/bench_students.py                          # kd and unix, M = 1, 2, 4, 8 steps each
    python benchmarks/bench_students.py --students 1,2,4,8 --steps 40 --teacher-arch resnet32x4

One ``python -m teacher_server`` (a randomly initialised ``--teacher-arch``: the
same compute as a trained one) is started with ``common.launch.start_teacher``;
for each method and each M, M ``python -m student_trainer --max-steps S`` processes
train ``--student-arch`` students against it at the same time (Fashion-MNIST if
/usr/share/datasets/fashion-mnist exists, else synthetic 1x28x28 images), each
with its own ``--client-id``.

Cores: the teacher process is pinned to the first core this script may use
(``os.sched_setaffinity``, inherited by the child; one torch thread), the students
to the others. Where there are at least M other cores each student gets its own
core; otherwise (a 2-core machine) the M students share the other core(s), so a
student's own compute slows down as M grows. The teacher's figures stay a clean
"one core serving M clients" reading either way.

What is measured, per (method, M):
  * teacher figures, from the server's Stats (polled every 0.2 s) over the window in
    which all M students were training (each had sent at least two requests and none
    had sent its last): images/s, mean gathered batch (forward images / forwards),
    busy fraction (busy seconds / wall seconds), teacher seconds per image (busy / images);
  * per student: steps/s over the same window (its own images from the per-client
    Stats / its images per step), and its teacher-wait fraction over its whole run
    (``teacher_wait_seconds`` / its training seconds, both from its summary.json).

How many students one teacher sustains (printed after the table). A student step is
c seconds of the student's own work (measured at M = 1: training seconds per step
minus teacher wait per step) and k images for the teacher (kd: the batch N; unix: k),
which costs the teacher k*t seconds (t = teacher busy seconds per image, pooled over
every measured window of both methods: on a shared machine one window alone is noisy). With M students, each on its own machine,
a round takes T = max(c + k*t, M*k*t): the student's own cycle, or the teacher serving
everybody's images one after another. The teacher is saturated from
M_sat = 1 + c/(k*t); a student waits (T - c) more than it computes (c) once T > 2c,
i.e. once M > 2c/(k*t), so the teacher sustains M_max = floor(2c/(k*t)) students
(0 where k*t > c: even one student waits more than it computes). The model ignores
the overlap of the teacher call with the student's own forward (which only helps)
and wire time (under a millisecond a call on localhost).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from common.launch import start_teacher, stop_teacher  # noqa: E402
from protos import teacher_pb2 as pb  # noqa: E402
from protos import teacher_pb2_grpc as pb_grpc  # noqa: E402

from pinning import pinned  # noqa: E402  (beside this script)

FASHION = Path("/usr/share/datasets/fashion-mnist")
TOTALS = ("images", "requests", "forwards", "forward_images", "busy_seconds", "uptime_seconds")




def student_command(args, port: int, method: str, client_id: str, out: Path, seed: int) -> list[str]:
    data = (["--dataset", "fashion-mnist"] if FASHION.is_dir()
            else ["--dataset", "synthetic", "--image-shape", "1,28,28", "--num-classes", "10"])
    return [sys.executable, "-m", "student_trainer", "--teacher-url", f"grpc://127.0.0.1:{port}",
            "--method", method, "--arch", args.student_arch, *data, "--batch-size", str(args.batch_size),
            "--k", str(args.k), "--epochs", "1", "--max-steps", str(args.steps),
            "--train-size", str(args.batch_size * args.steps), "--test-size", "64", "--workers", "0",
            "--no-progress", "--no-tensorboard", "--log-level", "WARNING", "--seed", str(seed),
            "--client-id", client_id, "--out", str(out)]


def poll_stats(stub) -> dict:
    s = stub.Stats(pb.StatsRequest(per_client=True), timeout=10)
    return {"t": time.monotonic(), **{f: getattr(s, f) for f in TOTALS},
            "clients": {c.client_id: c.images for c in s.clients}}


def run_level(args, stub, port: int, method: str, m: int, cores: list[int], work: Path) -> dict:
    """M students at once; the teacher's figures over the window where all M were training."""
    per_step = args.batch_size if method == "kd" else args.k
    final = per_step * args.steps
    ids = [f"bench-{method}-{m}-{i}-{os.getpid()}" for i in range(m)]
    own = len(cores) >= m
    procs = []
    for i, cid in enumerate(ids):
        student_cores = {cores[i]} if own else set(cores)
        with pinned(student_cores, threads=len(student_cores)):
            procs.append(subprocess.Popen(student_command(args, port, method, cid, work / cid, seed=i),
                                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    samples = []
    try:
        while any(p.poll() is None for p in procs):
            samples.append(poll_stats(stub))
            time.sleep(0.2)
        errors = {cid: p.stderr.read()[-2000:] for cid, p in zip(ids, procs) if p.wait() != 0}
        if errors:
            sys.exit(f"bench_students: a student failed: {errors}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    samples.append(poll_stats(stub))
    # The window: every student has sent >= 2 requests' worth (past its first, warm-up, step) and none
    # has sent its last.
    inside = [s for s in samples if all(2 * per_step <= s["clients"].get(c, 0) < final for c in ids)]
    overlap = len(inside) >= 2
    a, b = (inside[0], inside[-1]) if overlap else (samples[0], samples[-1])
    span = b["t"] - a["t"]
    d = {f: b[f] - a[f] for f in TOTALS}
    summaries = [json.loads((work / cid / "summary.json").read_text()) for cid in ids]
    students = []
    for cid, s in zip(ids, summaries):
        split = s.get("time_split", {})
        train_seconds = sum(v for k, v in split.items() if k not in ("eval", "checkpoint"))
        assert s["server_images_delta"] == s["teacher_images"], (cid, s["server_images_delta"], s["teacher_images"])
        students.append({
            "steps_per_s": (b["clients"].get(cid, 0) - a["clients"].get(cid, 0)) / per_step / span if span else 0.0,
            "wait_fraction": s["teacher_wait_seconds"] / train_seconds if train_seconds else float("nan"),
            "compute_per_step": (train_seconds - s["teacher_wait_seconds"]) / max(s["steps"], 1),
            "teacher_images": s["teacher_images"]})
    return {"method": method, "students": m, "own_cores": own, "overlap": overlap, "window_s": span,
            "images_per_s": d["images"] / span if span else 0.0,
            "mean_batch": d["forward_images"] / d["forwards"] if d["forwards"] else 0.0,
            "busy_fraction": d["busy_seconds"] / d["uptime_seconds"] if d["uptime_seconds"] else 0.0,
            "teacher_s_per_image": d["busy_seconds"] / d["forward_images"] if d["forward_images"] else 0.0,
            "busy_seconds": d["busy_seconds"], "forward_images": d["forward_images"],
            "per_step": per_step, "per_student": students}


def capacity(rows: list[dict]) -> list[dict]:
    t = sum(r["busy_seconds"] for r in rows) / max(sum(r["forward_images"] for r in rows), 1)
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        one = min((r for r in rows if r["method"] == method), key=lambda r: r["students"])
        c = sum(s["compute_per_step"] for s in one["per_student"]) / len(one["per_student"])
        k = one["per_step"]
        out.append({"method": method, "k": k, "c": c, "t": t, "kt": k * t,
                    "m_sat": 1 + c / (k * t), "m_max": math.floor(2 * c / (k * t))})
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="benchmarks/bench_students.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="kd,unix")
    p.add_argument("--students", default="1,2,4", help="student counts M, comma-separated")
    p.add_argument("--steps", type=int, default=8, help="training steps per student (--max-steps)")
    p.add_argument("--teacher-arch", default="resnet56")
    p.add_argument("--student-arch", default="resnet8")
    p.add_argument("--batch-size", type=int, default=64, help="N")
    p.add_argument("--k", type=int, default=48, help="images a unix step sends")
    p.add_argument("--max-batch", type=int, default=256, help="the server's --max-batch")
    p.add_argument("--queue-delay-us", type=int, default=100, help="the server's --queue-delay-us")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.students.split(",")]
    cores = sorted(os.sched_getaffinity(0))
    teacher_core, student_cores = cores[0], (cores[1:] or cores)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with pinned({teacher_core}, threads=1):
            server, port = start_teacher(
                "--arch", args.teacher_arch, "--num-classes", "10", "--input-shape", "1,28,28", "--port", "0",
                "--max-batch", str(args.max_batch), "--queue-delay-us", str(args.queue_delay_us),
                "--log-level", "WARNING", port_file=work / "port", cwd=ROOT)
        os.sched_setaffinity(0, set(student_cores))  # this script's polling stays off the teacher's core
        rows = []
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stub = pb_grpc.TeacherStub(channel)
            print(f"teacher {args.teacher_arch} on core {teacher_core} (1 thread), students {args.student_arch} on "
                  f"core(s) {student_cores}; data {'fashion-mnist' if FASHION.is_dir() else 'synthetic 1x28x28'}; "
                  f"N={args.batch_size}, unix k={args.k}, {args.steps} steps per student; server --max-batch "
                  f"{args.max_batch} --queue-delay-us {args.queue_delay_us}", flush=True)
            for method in args.methods.split(","):
                for m in levels:
                    start = time.monotonic()
                    rows.append(run_level(args, stub, port, method, m, student_cores, work))
                    r = rows[-1]
                    print(f"  {method} M={m}: {time.monotonic() - start:.0f} s, window {r['window_s']:.1f} s"
                          f"{'' if r['overlap'] else ' (no overlap: whole run)'}", file=sys.stderr, flush=True)
            channel.close()
        finally:
            stop_teacher(server)
    print()
    print("| method | M | students' cores | teacher images/s | mean gathered batch | busy fraction "
          "| teacher ms/image | steps/s per student | teacher-wait fraction per student |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        steps = ", ".join(f"{s['steps_per_s']:.2f}" for s in r["per_student"])
        waits = ", ".join(f"{s['wait_fraction']:.2f}" for s in r["per_student"])
        print(f"| {r['method']} | {r['students']} | {'own' if r['own_cores'] else 'shared'} "
              f"| {r['images_per_s']:.0f} | {r['mean_batch']:.1f} | {r['busy_fraction']:.2f} "
              f"| {r['teacher_s_per_image'] * 1e3:.2f} | {steps} | {waits} |")
    print()
    print("How many students one teacher (one core) sustains before a student waits on it more than it "
          "computes: M_max = floor(2c / (k t)), c = student compute s/step at the smallest M (own core), "
          "t = teacher busy s/image pooled over all windows; the teacher saturates from M_sat = 1 + c / (k t).")
    print()
    print("| method | k images/step | c: student compute s/step | t: teacher ms/image | k t: teacher s/step "
          "| teacher saturated from M | M_max |")
    print("|---|---|---|---|---|---|---|")
    for c in capacity(rows):
        print(f"| {c['method']} | {c['k']} | {c['c']:.3f} | {c['t'] * 1e3:.2f} | {c['kt']:.3f} "
              f"| {c['m_sat']:.1f} | {c['m_max']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "capacity": capacity(rows)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
