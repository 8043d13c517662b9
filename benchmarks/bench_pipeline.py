"""Two boxes on one machine: the teacher server on one core, the trainer on the other.

    python benchmarks/bench_pipeline.py                          # 60 steps an arm, 3 rounds, then the goal checks
    python benchmarks/bench_pipeline.py --json docs/pipeline.json
    python benchmarks/bench_pipeline.py --steps 8 --rounds 1 --arms kd-serial,unix-pipe --light none   # a quick look

``python -m teacher_server`` runs pinned to the first core this script may use
(``os.sched_setaffinity``, inherited by the child) with one torch/OpenMP thread
(``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``: the server has no thread flag); every
``python -m student_trainer`` of a remote arm runs pinned to the second core, also
with one thread. The in-process arm (``local:`` teacher) gets both cores and two
threads, no pinning: the same machine used as one box.

Data and models are those of the evidence table (README, Results): Fashion-MNIST if
/usr/share/datasets/fashion-mnist exists (else synthetic 1x28x28, 10 classes), N = 64,
UNIX k = 48. Teacher: ``--teacher-checkpoint``, by default the shipped
experiments/teachers/fashion-mnist-resnet20.pt if present, else a randomly initialised
``--teacher-arch`` (resnet56; same compute as a trained one), written once to a
checkpoint that the server and the in-process arm both load. Student ``--student-arch``
(resnet8). Each arm trains ``--steps`` steps (one epoch of ``--train-size`` = N x steps,
``--workers 0``, ``--test-size 64``, no TensorBoard, no progress bar).

Arms (``--arms`` picks some):
  local-kd      KD, in-process teacher, trainer with 2 threads on both cores
  kd-serial     KD against the server, --serial-teacher (wait for the answer, then compute)
  kd-pipe       KD, in-step overlap (the request goes out before the student's forward), D = 0
  kd-pipe-d1    KD, --prefetch 1 (D = 1)
  unix-serial   UNIX-KD, --serial-teacher
  unix-pipe     UNIX-KD, in-step overlap, D = 0
  unix-pipe-d1  UNIX-KD, --prefetch 1
  ce            CE alone (no teacher): the floor
An arm whose flags the trainer does not accept (``python -m student_trainer --help``) is
skipped, with the reason printed; ``--prefetch 0`` is passed to the D = 0 and serial
arms only where the trainer has ``--prefetch``.

A second configuration (``--light TEACHER:STUDENT``, default resnet8:resnet20; ``none``
skips it) runs kd-serial, kd-pipe, kd-pipe-d1 and ce with a light teacher and a heavier
student, so that the student is the slower side.

What is measured. The arms take turns in ``--rounds`` rounds, the order rotated each
round, so that load from other jobs on a shared machine falls on all of them alike.
Per run: the seconds of the training loop (``epoch_seconds`` in metrics.jsonl: the steps
only; evaluation, checkpoints and process start are outside it; the first step, which
warms the process up, is inside), divided by the steps; images/s = student images / those
seconds; and ``time_split`` from summary.json divided by the steps (teacher = time
blocked waiting for the teacher; other = the loop's seconds not in any phase, plus
mixing). Per arm the median over rounds.

Core isolation, before and after the rounds: a fixed 1-thread compute on the trainer's
core, with the teacher's core left alone and then kept busy by a spin loop. Two real,
otherwise idle cores give a factor near 1. On a shared machine (other jobs' unpinned
processes move to the trainer's core once the teacher's is busy) or with SMT siblings it
is well above 1: then pipelined arms, which keep both cores busy at once, are slowed
while serial arms, which alternate, are not, and the script says so.

Which side is slower, per configuration and method: from the serial arm, teacher side =
its teacher seconds per step (the whole round trip: encode, wire, queue, forward,
decode), student side = its other seconds per step (data, uncertainty, mixing, student).

Goals, from the same run, each printed PASS/MISS with its numbers:
  G1  remote UNIX pipelined s/step <= 0.7 x remote KD serial s/step (main configuration)
  G2  remote UNIX pipelined / remote KD pipelined (s/step) within 0.05 of k/N when the
      teacher is the slower side: computed on the main configuration, judged (PASS/MISS)
      only where the teacher is the slower side for both KD and UNIX, else n/a with the numbers
  G3  remote KD pipelined images/s >= 0.9 x CE-alone images/s, in a configuration where
      the student is the slower side for KD
G1 and G2 are judged on the deepest pipelining measured (D = 1 where the trainer has
--prefetch), with D = 0 shown beside. A MISS says where the remaining time is.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from common.cli_errors import one_line_errors  # noqa: E402
from common.launch import start_teacher, stop_teacher  # noqa: E402

from pinning import THREAD_VARS, pinned  # noqa: E402  (beside this script)

FASHION = Path("/usr/share/datasets/fashion-mnist")
SHIPPED_TEACHER = ROOT / "experiments/teachers/fashion-mnist-resnet20.pt"
INPUT_SHAPE, NUM_CLASSES = (1, 28, 28), 10
PHASES = ("teacher", "student", "uncertainty", "mixing", "data")


@dataclass(frozen=True)
class Arm:
    name: str
    method: str                       # --method
    teacher: str | None               # "remote", "local" or None (ce)
    flags: tuple[str, ...] = ()       # needed: an arm whose flag the trainer lacks is skipped
    optional: tuple[str, ...] = ()    # a flag and its value, passed only where the trainer has the flag
    depth: int | None = None          # D: steps prefetched (None: serial or no teacher)
    about: str = ""


ARMS = (
    Arm("local-kd", "kd", "local", optional=("--prefetch", "0"), depth=0,
        about="KD, in-process teacher, 2 threads, both cores"),
    Arm("kd-serial", "kd", "remote", ("--serial-teacher",), ("--prefetch", "0"), about="KD, serial"),
    Arm("kd-pipe", "kd", "remote", optional=("--prefetch", "0"), depth=0, about="KD, in-step overlap (D=0)"),
    Arm("kd-pipe-d1", "kd", "remote", ("--prefetch", "1"), depth=1, about="KD, --prefetch 1 (D=1)"),
    Arm("unix-serial", "unix", "remote", ("--serial-teacher",), ("--prefetch", "0"), about="UNIX, serial"),
    Arm("unix-pipe", "unix", "remote", optional=("--prefetch", "0"), depth=0, about="UNIX, in-step overlap (D=0)"),
    Arm("unix-pipe-d1", "unix", "remote", ("--prefetch", "1"), depth=1, about="UNIX, --prefetch 1 (D=1)"),
    Arm("ce", "ce", None, about="CE alone (no teacher)"),
)
BY_NAME = {a.name: a for a in ARMS}
LIGHT_ARMS = ("kd-serial", "kd-pipe", "kd-pipe-d1", "ce")


@dataclass
class Config:
    name: str
    teacher: str                      # what the teacher is, for the tables
    checkpoint: Path
    student: str
    arms: list[Arm]
    url: str = ""
    runs: dict[str, list[dict]] = field(default_factory=dict)




def trainer_flags() -> str:
    """The trainer's --help text, to learn which flags it accepts (the lead's --prefetch may be absent)."""
    done = subprocess.run([sys.executable, "-m", "student_trainer", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0:
        raise OSError(f"python -m student_trainer --help failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def has_flag(help_text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def random_teacher(arch: str, path: Path) -> Path:
    """A randomly initialised ``arch`` (seed 0) as our checkpoint, for the server and local: alike."""
    import torch

    from common.checkpoint import make_checkpoint, save_checkpoint
    from common.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, num_classes=NUM_CLASSES, in_channels=INPUT_SHAPE[0])
    return save_checkpoint(make_checkpoint(model, arch=arch, num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE,
                                           meta={"note": "random weights, seed 0 (bench_pipeline)"}), path)


def trainer_command(args, cfg: Config, arm: Arm, help_text: str, out: Path) -> list[str]:
    data = (["--dataset", "fashion-mnist"] if FASHION.is_dir()
            else ["--dataset", "synthetic", "--image-shape", ",".join(map(str, INPUT_SHAPE)),
                  "--num-classes", str(NUM_CLASSES)])
    cmd = [sys.executable, "-m", "student_trainer", "--method", arm.method, "--arch", cfg.student, *data,
           "--batch-size", str(args.batch_size), "--epochs", "1", "--max-steps", str(args.steps),
           "--train-size", str(args.batch_size * args.steps), "--test-size", "64", "--workers", "0",
           "--no-progress", "--no-tensorboard", "--log-level", "WARNING", "--seed", "0", "--out", str(out)]
    if arm.method == "unix":
        cmd += ["--k", str(args.k)]
    if arm.teacher == "remote":
        cmd += ["--teacher-url", cfg.url, "--client-id", f"bench-pipeline-{cfg.name}-{arm.name}"]
    elif arm.teacher == "local":
        cmd += ["--teacher-url", f"local:{cfg.checkpoint}"]
    cmd += list(arm.flags)
    if arm.optional and has_flag(help_text, arm.optional[0]):
        cmd += list(arm.optional)
    return cmd


def measure(out: Path) -> dict:
    """One run's figures per step, from its summary.json and metrics.jsonl."""
    s = json.loads((out / "summary.json").read_text())
    split = s.get("time_split") or {}
    steps = max(s["steps"], 1)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    loop = sum(r["epoch_seconds"] for r in records) if records and all("epoch_seconds" in r for r in records) \
        else s["wall_seconds"] - split.get("eval", 0.0) - split.get("checkpoint", 0.0)
    phases = {p: split.get(p, 0.0) / steps for p in PHASES}
    timed = sum(phases.values())
    return {"steps": s["steps"], "loop_seconds": loop, "s_per_step": loop / steps,
            "images_per_s": s["student_images"] / loop if loop > 0 else 0.0,
            **{f"{p}_per_step": v for p, v in phases.items()},
            "other_per_step": loop / steps - timed + phases["mixing"],  # mixing and whatever no phase holds
            "teacher_images_per_step": s["teacher_images"] / steps,
            "server_images_delta": s.get("server_images_delta"), "teacher_images": s["teacher_images"],
            "wall_minus_eval_checkpoint": s["wall_seconds"] - split.get("eval", 0.0) - split.get("checkpoint", 0.0),
            "time_split": split}


def run_arm(args, cfg: Config, arm: Arm, help_text: str, cores: list[int], work: Path, rnd: int) -> dict:
    out = work / cfg.name / f"{arm.name}-r{rnd}"
    shutil.rmtree(out, ignore_errors=True)  # a --work-dir used before: the trainer refuses a folder with a run
    out.mkdir(parents=True, exist_ok=True)
    cmd = trainer_command(args, cfg, arm, help_text, out)
    on, threads = ({cores[0], cores[1]}, 2) if arm.teacher == "local" else ({cores[1]}, 1)
    env = {**os.environ, **{k: str(threads) for k in THREAD_VARS}}
    start = time.monotonic()
    with (out / "trainer.log").open("w") as log:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              preexec_fn=lambda: os.sched_setaffinity(0, on))
    if done.returncode != 0:
        tail = (out / "trainer.log").read_text().strip().splitlines()[-5:]
        raise OSError(f"{cfg.name}/{arm.name} (round {rnd + 1}) exited with {done.returncode}: "
                      + " | ".join(tail) + f"  (command: {' '.join(cmd)})")
    m = measure(out)
    m["process_seconds"] = time.monotonic() - start
    m["command"] = cmd[1:]
    return m


ISOLATION_PROBE = """
import sys, time, torch
torch.set_num_threads(1)
x = torch.randn(64, 1, 28, 28)
m = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3)).eval()
def work():
    t = time.perf_counter()
    with torch.no_grad():
        for _ in range(10):
            m(x)
    return time.perf_counter() - t
work()
print(min(work() for _ in range(int(sys.argv[1]))))
"""


def isolation(cores: list[int], repeats: int = 5) -> dict:
    """How independent the two cores are: a fixed 1-thread compute on the trainer's core, with the
    teacher's core left alone and then kept busy by a spin loop pinned there. On two real, otherwise idle
    cores the factor is ~1; where they share a physical core, or other jobs' unpinned processes move over
    to the trainer's core once the teacher's is busy, it is well above 1, and every arm that keeps both
    cores busy at once (pipelined, above all D = 1) is slowed by it while serial arms, which alternate, are not.
    """
    def probe() -> float:
        done = subprocess.run([sys.executable, "-c", ISOLATION_PROBE, str(repeats)], capture_output=True, text=True,
                              env={**os.environ, **{k: "1" for k in THREAD_VARS}}, timeout=300,
                              preexec_fn=lambda: os.sched_setaffinity(0, {cores[1]}))
        if done.returncode != 0:
            raise OSError(f"isolation probe failed: {done.stderr.strip()[-300:]}")
        return float(done.stdout.split()[-1])

    free = probe()
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=lambda: os.sched_setaffinity(0, {cores[0]}))
    try:
        busy = probe()
    finally:
        spin.kill()
        spin.wait()
    return {"free_s": free, "busy_s": busy, "factor": busy / free}


def warm_up(url: str, batch: int, k: int) -> None:
    """A few calls, so that no arm pays for the server's first forwards (kernel choice, allocations)."""
    import torch

    from student_trainer.teachers import connect

    with connect(url) as client:
        for n in (batch, k, batch, k):
            client.infer(torch.randn(n, *INPUT_SHAPE), ["logits"])


def median_row(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: statistics.median(r[k] for r in runs if r.get(k) is not None)
            for k in keys if any(r.get(k) is not None for r in runs)} | {"rounds": len(runs)}


def sides(rows: dict[str, dict], method: str) -> dict | None:
    """Teacher side and student side per step for ``method``, from its serial arm."""
    serial = rows.get(f"{method}-serial")
    if not serial:
        return None
    t = serial["teacher_per_step"]
    s = serial["s_per_step"] - t
    return {"teacher_s": t, "student_s": s, "slower": "teacher" if t > s else "student"}


def deepest(rows: dict[str, dict], method: str) -> list[str]:
    """Pipelined arms of ``method`` that ran, deepest D first."""
    names = [a.name for a in sorted(ARMS, key=lambda a: -(a.depth or 0))
             if a.method == method and a.teacher == "remote" and a.depth is not None]
    return [n for n in names if n in rows]


def where(row: dict, name: str, side: dict | None) -> str:
    parts = ", ".join(f"{p} {row[f'{p}_per_step']:.3f}" for p in ("teacher", "student", "uncertainty", "data"))
    text = (f"{name} {row['s_per_step']:.3f} s/step: teacher wait {row['teacher_per_step']:.3f} "
            f"({row['teacher_per_step'] / row['s_per_step']:.0%} of the step); split {parts}, "
            f"other {row['other_per_step']:.3f}")
    if side:
        bound = max(side["teacher_s"], side["student_s"])
        text += (f"; serial sides: teacher {side['teacher_s']:.3f}, student {side['student_s']:.3f} s/step, "
                 f"so a perfect pipeline would take ~{bound:.3f}")
    return text


def goals(configs: list[Config], rows: dict[str, dict[str, dict]], batch: int) -> list[dict]:
    out = []
    main = configs[0]
    r = rows[main.name]
    # G1: remote UNIX pipelined <= 0.7 x remote KD serial.
    g = {"goal": "G1", "what": "remote UNIX pipelined s/step <= 0.7 x remote KD serial", "config": main.name}
    pipes = deepest(r, "unix")
    if "kd-serial" not in r or not pipes:
        g |= {"verdict": "n/a", "why": "needs kd-serial and a unix-pipe arm"}
    else:
        lines = []
        for i, name in enumerate(pipes):
            ratio = r[name]["s_per_step"] / r["kd-serial"]["s_per_step"]
            ok = ratio <= 0.7
            lines.append({"arm": name, "ratio": ratio, "pass": ok})
            if i == 0:
                g |= {"verdict": "PASS" if ok else "MISS", "ratio": ratio, "arm": name,
                      "numbers": f"{name} {r[name]['s_per_step']:.3f} s/step / kd-serial "
                                 f"{r['kd-serial']['s_per_step']:.3f} = {ratio:.3f} (goal <= 0.700)"}
                if not ok:
                    g["miss"] = where(r[name], name, sides(r, "unix"))
        g["all"] = lines
    out.append(g)
    # G2: UNIX pipelined / KD pipelined within 0.05 of k/N where the teacher is the slower side. The
    # ratio is k/N only if both methods are teacher-bound; it is computed (main configuration) either way.
    g = {"goal": "G2",
         "what": "remote UNIX pipelined / remote KD pipelined within 0.05 of k/N, teacher the slower side",
         "config": main.name}
    r = rows[main.name]
    sk, su = sides(r, "kd"), sides(r, "unix")
    pairs = [(u, u.replace("unix", "kd")) for u in deepest(r, "unix") if u.replace("unix", "kd") in r]
    if not pairs:
        g |= {"verdict": "n/a", "why": "needs a kd-pipe and a unix-pipe arm of the same D"}
    else:
        bound = bool(sk and su and sk["slower"] == su["slower"] == "teacher")
        lines = []
        for i, (u, kd) in enumerate(pairs):
            kn = r[u]["teacher_images_per_step"] / batch
            ratio = r[u]["s_per_step"] / r[kd]["s_per_step"]
            ok = abs(ratio - kn) <= 0.05
            lines.append({"arms": [u, kd], "ratio": ratio, "k_over_n": kn, "pass": ok})
            if i == 0:
                side = "; ".join(f"{m} teacher {s['teacher_s']:.3f} vs student {s['student_s']:.3f} s/step "
                                 f"({s['slower']} slower)" for m, s in (("kd", sk), ("unix", su)) if s) \
                    or "sides unknown (no serial arms)"
                g |= {"verdict": ("PASS" if ok else "MISS") if bound else "n/a", "ratio": ratio, "k_over_n": kn,
                      "teacher_slower": bound,
                      "numbers": f"{u} {r[u]['s_per_step']:.3f} / {kd} {r[kd]['s_per_step']:.3f} = {ratio:.3f}, "
                                 f"k/N = {kn:.3f}, off by {abs(ratio - kn):.3f} (goal <= 0.050); {side}"}
                if not bound:
                    g["why"] = ("the goal's condition does not hold: the teacher is not the slower side for both "
                                "kd and unix here (a heavier --teacher-arch makes it so)")
                if bound and not ok:
                    g["miss"] = where(r[u], u, su) + " || " + where(r[kd], kd, sk)
        g["all"] = lines
    out.append(g)
    # G3: KD pipelined images/s >= 0.9 x CE images/s where the student is the slower side.
    g = {"goal": "G3", "what": "remote KD pipelined images/s >= 0.9 x CE-alone images/s, student the slower side"}
    judged = False
    for c in configs:
        r = rows[c.name]
        sk = sides(r, "kd")
        pipes = deepest(r, "kd")
        if not sk or sk["slower"] != "student" or "ce" not in r or not pipes:
            continue
        lines = []
        for i, name in enumerate(pipes):
            ratio = r[name]["images_per_s"] / r["ce"]["images_per_s"]
            ok = ratio >= 0.9
            lines.append({"arm": name, "ratio": ratio, "pass": ok})
            if i == 0:
                g |= {"config": c.name, "verdict": "PASS" if ok else "MISS", "ratio": ratio, "arm": name,
                      "numbers": f"{name} {r[name]['images_per_s']:.1f} images/s / ce {r['ce']['images_per_s']:.1f} "
                                 f"= {ratio:.3f} (goal >= 0.900); student slower: teacher {sk['teacher_s']:.3f} vs "
                                 f"student {sk['student_s']:.3f} s/step (kd-serial)"}
                if not ok:
                    ce = r["ce"]
                    extra = ", ".join(f"{p} {r[name][f'{p}_per_step'] - ce[f'{p}_per_step']:+.3f}"
                                      for p in ("teacher", "student", "uncertainty", "data", "other"))
                    g["miss"] = where(r[name], name, sk) + f"; over ce per step: {extra}"
        g["all"] = lines
        judged = True
        break
    if not judged:
        seen = "; ".join(f"{c.name}: kd {s['slower']} slower" for c in configs if (s := sides(rows[c.name], "kd")))
        g |= {"verdict": "n/a", "why": "no configuration measured with the student the slower side and with kd-serial, "
              f"a kd-pipe arm and ce ({seen or 'no serial arms'}); --light TEACHER:STUDENT with a heavier student "
              "shows it"}
    out.append(g)
    return out


def table(configs: list[Config], rows: dict[str, dict[str, dict]]) -> str:
    lines = ["| config | arm | what | s/step | images/s | s/step ÷ KD serial | images/s ÷ KD serial "
             "| teacher wait s/step | student s/step | uncertainty s/step | data s/step | other s/step "
             "| teacher images/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in configs:
        r = rows[c.name]
        base = r.get("kd-serial")
        for arm in c.arms:
            if arm.name not in r:
                continue
            x = r[arm.name]
            rs = f"{x['s_per_step'] / base['s_per_step']:.2f}" if base else "-"
            ri = f"{x['images_per_s'] / base['images_per_s']:.2f}" if base else "-"
            lines.append(f"| {c.name} ({c.teacher} → {c.student}) | {arm.name} | {arm.about} | {x['s_per_step']:.3f} "
                         f"| {x['images_per_s']:.1f} | {rs} | {ri} | {x['teacher_per_step']:.3f} "
                         f"| {x['student_per_step']:.3f} | {x['uncertainty_per_step']:.3f} | {x['data_per_step']:.3f} "
                         f"| {x['other_per_step']:.3f} | {x['teacher_images_per_step']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="benchmarks/bench_pipeline.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher-checkpoint", help=f"default: {SHIPPED_TEACHER.relative_to(ROOT)} if present "
                   "(and no --teacher-arch), else a random --teacher-arch")
    p.add_argument("--teacher-arch", help="a randomly initialised teacher of this arch (default resnet56 when "
                   "there is no shipped checkpoint)")
    p.add_argument("--student-arch", default="resnet8")
    p.add_argument("--light", default="resnet8:resnet20", metavar="TEACHER:STUDENT",
                   help="second configuration (random teacher), meant to make the student the slower side; "
                        "'none' skips it")
    p.add_argument("--arms", default=",".join(a.name for a in ARMS), help="arms of the main configuration")
    p.add_argument("--steps", type=int, default=60, help="training steps per run (--max-steps)")
    p.add_argument("--rounds", type=int, default=3, help="runs per arm, interleaved, order rotated each round")
    p.add_argument("--batch-size", type=int, default=64, help="N")
    p.add_argument("--k", type=int, default=48, help="images a UNIX step sends")
    p.add_argument("--cores", help="the teacher's core and the trainer's, like 0,1 (default: the first two this "
                   "process may use); on a bigger machine pick two that are not SMT siblings")
    p.add_argument("--work-dir", help="keep every run's folder here (default: a temporary folder, removed)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    with one_line_errors("bench_pipeline"):
        unknown = [a for a in args.arms.split(",") if a not in BY_NAME]
        if unknown:
            raise ValueError(f"unknown arm {unknown[0]!r}; arms: {', '.join(BY_NAME)}")
        if min(args.steps, args.rounds, args.batch_size, args.k) < 1 or args.k > args.batch_size:
            raise ValueError("--steps, --rounds, --batch-size and --k must be positive, --k at most --batch-size")
        cores = sorted(os.sched_getaffinity(0))
        if args.cores:
            try:
                chosen = [int(c) for c in args.cores.split(",")]
            except ValueError:
                chosen = []
            if len(chosen) != 2 or chosen[0] == chosen[1] or not set(chosen) <= set(cores):
                raise ValueError(f"--cores takes two different cores of {cores} like 0,1, got {args.cores!r}")
            cores = chosen
        if len(cores) < 2:
            raise ValueError(f"needs 2 cores (one for the teacher, one for the trainer); this process may use {cores}")
        with ExitStack() as stack:
            work = Path(args.work_dir) if args.work_dir else Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="bench-pipeline-")))
            work.mkdir(parents=True, exist_ok=True)
            return run(args, cores, work, stack)


def run(args, cores: list[int], work: Path, stack: ExitStack) -> dict:
    help_text = trainer_flags()
    wanted = [BY_NAME[a] for a in args.arms.split(",")]
    if args.teacher_arch:
        checkpoint = random_teacher(args.teacher_arch, work / "teacher-main.pt")
        teacher = f"{args.teacher_arch} (random)"
    elif args.teacher_checkpoint or SHIPPED_TEACHER.is_file():
        checkpoint = Path(args.teacher_checkpoint or SHIPPED_TEACHER).resolve()
        teacher = checkpoint.name
    else:
        checkpoint, teacher = random_teacher("resnet56", work / "teacher-main.pt"), "resnet56 (random)"
    configs = [Config("main", teacher, checkpoint, args.student_arch, wanted)]
    if args.light.lower() != "none":
        t_arch, _, s_arch = args.light.partition(":")
        if not t_arch or not s_arch:
            raise ValueError(f"--light takes TEACHER:STUDENT like resnet8:resnet20, or none; got {args.light!r}")
        configs.append(Config("light", f"{t_arch} (random)", random_teacher(t_arch, work / "teacher-light.pt"),
                              s_arch, [BY_NAME[a] for a in LIGHT_ARMS]))
    skipped = []
    for c in configs:
        keep = []
        for arm in c.arms:
            missing = [f for f in arm.flags if f.startswith("--") and not has_flag(help_text, f)]
            if missing:
                skipped.append(f"{c.name}/{arm.name}: skipped, the trainer has no {' '.join(missing)} "
                               f"(python -m student_trainer --help)")
            else:
                keep.append(arm)
        c.arms = keep
    for line in skipped:
        print(line, file=sys.stderr, flush=True)
    # Servers: pinned to the first core, one thread each; both up for the whole run (an idle one sleeps).
    for c in configs:
        if not any(a.teacher == "remote" for a in c.arms):
            continue
        log = stack.enter_context((work / f"server-{c.name}.log").open("w"))
        with pinned({cores[0]}, threads=1):
            server, port = start_teacher("--checkpoint", c.checkpoint, "--port", "0", "--max-batch",
                                         max(256, 2 * args.batch_size), "--log-level", "WARNING",
                                         port_file=work / f"server-{c.name}.port", cwd=ROOT, stdout=log, timeout=300)
        stack.callback(stop_teacher, server)
        c.url = f"grpc://127.0.0.1:{port}"
        warm_up(c.url, args.batch_size, args.k)
    data = "fashion-mnist" if FASHION.is_dir() else "synthetic 1x28x28, 10 classes"
    load_before = os.getloadavg()
    iso_before = isolation(cores)
    header = (f"teacher server on core {cores[0]} (1 thread), trainer on core {cores[1]} (1 thread); local-kd on "
              f"cores {cores[0]},{cores[1]} (2 threads); data {data}; N={args.batch_size}, UNIX k={args.k}; "
              f"{args.steps} steps a run, {args.rounds} rounds, arm order rotated each round; "
              f"trainer --prefetch: {'yes' if has_flag(help_text, '--prefetch') else 'no'}")
    print(header, flush=True)
    pairs = [(c, a) for c in configs for a in c.arms]
    start = time.monotonic()
    for rnd in range(args.rounds):
        order = pairs[rnd % len(pairs):] + pairs[:rnd % len(pairs)]
        for c, arm in order:
            m = run_arm(args, c, arm, help_text, cores, work, rnd)
            c.runs.setdefault(arm.name, []).append(m)
            print(f"  round {rnd + 1}/{args.rounds} {c.name}/{arm.name}: {m['s_per_step']:.3f} s/step, "
                  f"teacher wait {m['teacher_per_step']:.3f} ({m['process_seconds']:.0f} s with start-up; "
                  f"{time.monotonic() - start:.0f} s so far)", file=sys.stderr, flush=True)
    rows = {c.name: {name: median_row(runs) for name, runs in c.runs.items()} for c in configs}
    load_after = os.getloadavg()
    iso_after = isolation(cores)
    factor = max(iso_before["factor"], iso_after["factor"])
    results = goals(configs, rows, args.batch_size)
    print()
    print(table(configs, rows))
    print()
    print(f"Medians of {args.rounds} rounds. Load average (1/5/15 min) before "
          f"{' '.join(f'{x:.1f}' for x in load_before)}, "
          f"after {' '.join(f'{x:.1f}' for x in load_after)} ({os.cpu_count()} CPUs).")
    print(f"Core isolation: a 1-thread compute on core {cores[1]} took x{iso_before['factor']:.2f} (before the rounds) "
          f"and x{iso_after['factor']:.2f} (after) as long with core {cores[0]} kept busy as with it left alone"
          + (": the two cores are NOT independent here (shared physical core, or other jobs moving over), so arms "
             "that keep both busy at once (pipelined, above all D = 1) are slowed and serial arms are not; read "
             "the goals below with that in mind, and judge them on a quiet machine." if factor > 1.2 else
             ": the two cores behave as two boxes."))
    for c in configs:
        for method in ("kd", "unix"):
            s = sides(rows[c.name], method)
            if s:
                print(f"{c.name} ({c.teacher} → {c.student}), {method}: teacher side {s['teacher_s']:.3f} s/step, "
                      f"student side {s['student_s']:.3f} s/step (serial arm) → the {s['slower']} is the slower side")
    print()
    for g in results:
        print(f"{g['goal']} {g['verdict']}: {g['what']}" + (f" [{g['config']}]" if g.get("config") else ""))
        for text in (g.get("numbers"), g.get("why")):
            if text:
                print(f"    {text}")
        for other in g.get("all", [])[1:]:
            label = other.get("arm") or " / ".join(other["arms"])
            target = f" (k/N {other['k_over_n']:.3f})" if "k_over_n" in other else ""
            verdict = "n/a" if g["verdict"] == "n/a" else "PASS" if other["pass"] else "MISS"
            print(f"    also {label}: ratio {other['ratio']:.3f}{target} → {verdict}")
        if g.get("miss"):
            print(f"    where the time is: {g['miss']}")
    for line in skipped:
        print(line)
    figures = {"header": header, "skipped": skipped, "load_before": load_before, "load_after": load_after,
               "isolation_before": iso_before, "isolation_after": iso_after,
               "configs": [{"name": c.name, "teacher": c.teacher, "checkpoint": str(c.checkpoint),
                            "student": c.student, "arms": {a.name: a.about for a in c.arms},
                            "median": rows[c.name], "runs": c.runs,
                            "sides": {m: sides(rows[c.name], m) for m in ("kd", "unix")}} for c in configs],
               "goals": results, "args": vars(args)}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return figures


if __name__ == "__main__":
    main()
