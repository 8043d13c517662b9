"""Two boxes on one machine: the teacher served on its own core, the student trained on another.

The server (``python -m teacher_server``, gRPC or ``--backend triton``) runs pinned to core 1 with one
thread; every trainer arm runs pinned to core 0 with one torch thread (``os.sched_setaffinity``, inherited by
each process started inside), so the student's core is the only one its client may spend. Every arm is
``python -m student_trainer`` as a user types it, the shipped Fashion-MNIST resnet20 teacher, a resnet8
student, batch 64, ``--workers 0``, the same seed and steps; the hand-written arm is the RepDistiller-shaped
loop of ``bench_overhead.py`` with its teacher in-process on core 0. Arms alternate within each round; a
figure is the median over rounds of the loop's seconds (wall time less evaluation and checkpoints), and a
ratio between two arms the geometric mean of their per-round ratios with its 95 % interval, over all rounds
and over the quiet ones (the hypervisor stole under 2 % of each arm's loop from the student's core). Each arm's
process CPU seconds, kernel seconds and page faults (start-up included) and the seconds the hypervisor stole
from the student's core are printed beside it. ``ce-system-malloc`` and ``kd-system-malloc`` run with
``UNIXKD_MALLOC=system``: glibc's own thresholds, which hand freed activations back to the kernel each step.

Two cores of one machine are not two boxes: where they share a physical core or a host's time, the
student slows down while the teacher's core works. ``ce-busy`` measures that: CE on core 0 while a load
client on core 1 keeps the teacher answering 64-image batches back to back (as busy as KD keeps it), so
``kd / ce-busy`` is what the split costs the student beyond its neighbour's noise. ``ce-neighbour`` is CE
beside the teacher's forward alone, back to back in a plain process on core 1 (no server, no wire): where
it is as slow as ``ce-busy``, what slows the student is the neighbour's compute (shared cache and memory),
not the wire.

    python benchmarks/bench_two_boxes.py                          # every arm, gRPC, 150 steps, 3 rounds
    python benchmarks/bench_two_boxes.py --backend triton         # the same through Triton
    python benchmarks/bench_two_boxes.py --arms ce,kd --rounds 1  # a quick look
    python benchmarks/bench_two_boxes.py --arms ce,ce-neighbour,ce-busy,kd --rounds 10 --student-core 0 --teacher-core 8

The header says which caches the two cores share (sysfs): on a machine with more cores, pick two that
share none (another L3 domain), and the neighbour's cost should vanish, as between two boxes.

Needs two cores, Fashion-MNIST (``make data``) and, for ``--backend triton``, Triton's Python wheel.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from bench_overhead import TEACHER, run_hand, run_trainer, trainer_flags  # noqa: E402  (beside this script)
from pinning import environment, pinned  # noqa: E402

from student_trainer.tools.paired import paired_difference  # noqa: E402

STUDENT_CORE, TEACHER_CORE = {0}, {1}  # --student-core / --teacher-core set them for the whole run
# arm -> (method, where the teacher is, extra trainer flags, environment); "served": the server on the teacher's core
SYSTEM_MALLOC = {"UNIXKD_MALLOC": "system"}  # glibc's own malloc thresholds, not the trainer's kept memory
ARMS = {
    "ce": ("ce", None, [], {}),
    "ce-busy": ("ce", "busy", [], {}),                            # CE while the teacher's core answers a load client
    "ce-neighbour": ("ce", "neighbour", [], {}),                  # CE beside the teacher's bare forward, no wire
    "ce-neighbour-b8": ("ce", "neighbour-b8", [], {}),            # the same, 8 images a forward (about fits L2)
    "kd": ("kd", "served", [], {}),                               # the defaults: --prefetch auto
    "kd-prefetch0": ("kd", "served", ["--prefetch", "0"], {}),     # the old default: overlap with the forward only
    "kd-prefetch1": ("kd", "served", ["--prefetch", "1"], {}),     # fixed depths, to judge auto's choice
    "kd-prefetch2": ("kd", "served", ["--prefetch", "2"], {}),
    "kd-serial": ("kd", "served", ["--serial-teacher"], {}),
    "unix": ("unix", "served", [], {}),                           # the defaults: exact, no steps ahead
    "unix-local": ("unix", "local", [], {}),                       # the teacher in the trainer, on the student's core
    "kd-hand": ("kd", "hand", [], {}),                             # the hand-written loop, teacher in-process
    "ce-system-malloc": ("ce", None, [], SYSTEM_MALLOC),
    "kd-system-malloc": ("kd", "served", [], SYSTEM_MALLOC),
}


def served(backend: str, log):
    """Start the teacher on its core: (process, url)."""
    from common.launch import start_teacher

    tmp = Path(tempfile.mkdtemp())
    args = ["--checkpoint", str(TEACHER), "--port", "0"]
    if backend == "triton":
        from teacher_server.triton_backend import free_port

        metrics = free_port()
        args += ["--backend", "triton", "--http-port", str(free_port()), "--metrics-port", str(metrics)]
    with pinned(TEACHER_CORE, 1):
        proc, port = start_teacher(*args, port_file=tmp / "port", stdout=log, cwd=ROOT, timeout=180)
    url = (f"triton://127.0.0.1:{port}/teacher?metrics_port={metrics}" if backend == "triton"
           else f"grpc://127.0.0.1:{port}")
    return proc, url


LOAD_CLIENT = """
import sys, torch
from student_trainer.teachers import connect
client = connect(sys.argv[1], wire_dtype="float16")
x = torch.randn(64, *client.describe().input_shape)
ahead = [client.submit(x, ["logits"]) for _ in range(2)]
while True:
    ahead.pop(0).result()
    ahead.append(client.submit(x, ["logits"]))
"""


NEIGHBOUR = """
import sys, torch
from common.teacher_model import load_teacher
teacher = load_teacher(sys.argv[1])
x = torch.randn(64, *teacher.input_shape)
while True:
    for part in x.split(int(sys.argv[2])):
        teacher.forward(part, ["logits"])
"""


def busy_teacher(url: str) -> subprocess.Popen:
    """A client on the teacher's core asking about 64 images at a time, two requests on the wire, until killed."""
    with pinned(TEACHER_CORE, 1):
        return subprocess.Popen([sys.executable, "-c", LOAD_CLIENT, url], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)


def busy_neighbour(batch: int = 64) -> subprocess.Popen:
    """The teacher's forward on 64 images, ``batch`` at a time, back to back, in a process of its own on the
    teacher's core, with no server and no wire: what the teacher's compute alone costs its neighbour, until
    killed. At 8 images a forward its activations (about 0.4 MB a layer) roughly fit the core's own 2 MB L2; at
    64 (3.2 MB a layer) they stream through the shared L3."""
    with pinned(TEACHER_CORE, 1):
        return subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(TEACHER), str(batch)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# where -> what keeps the teacher's core busy while a CE arm trains (given the served teacher's url)
LOADS = {"busy": busy_teacher, "neighbour": lambda url: busy_neighbour(64),
         "neighbour-b8": lambda url: busy_neighbour(8)}


def shared_cache(a: int, b: int) -> str:
    """Which cache levels cores ``a`` and ``b`` share, from sysfs ("L3", "none", or "unknown"): two cores
    that share one are not two boxes, since the teacher's forward streams its activations through it."""
    shared = []
    try:
        for index in sorted(Path(f"/sys/devices/system/cpu/cpu{a}/cache").glob("index*")):
            level = (index / "level").read_text().strip()
            cpus = set()
            for part in (index / "shared_cpu_list").read_text().strip().split(","):
                lo, _, hi = part.partition("-")
                cpus |= set(range(int(lo), int(hi or lo) + 1))
            if b in cpus and f"L{level}" not in shared:
                shared.append(f"L{level}")
    except (OSError, ValueError):
        return "unknown"
    return ", ".join(shared) or "none"


def stolen_seconds(core: int) -> float:
    """Seconds the hypervisor has so far kept ``core`` from this machine (steal time in /proc/stat; 0 if absent).

    On a VM the host's other guests take turns on our cores; steal is how much of the arm's wall time the
    student's core did not run at all, which no change to the trainer can win back."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            fields = line.split()
            if fields[0] == f"cpu{core}":
                return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0
    except OSError:
        pass
    return 0.0


def one_arm(arm: str, url: str, args, out: Path) -> dict:
    """The arm's loop seconds and phases, the CPU seconds its process spent (all on the student's core), and
    the seconds the hypervisor stole from that core meanwhile."""
    method, where, extra, env = ARMS[arm]
    core = min(STUDENT_CORE)
    load = LOADS[where](url) if where in LOADS else None
    try:
        before, stolen = resource.getrusage(resource.RUSAGE_CHILDREN), stolen_seconds(core)
        result = _trainer_or_hand(method, where, extra, url, args, out, env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the load client is still running: not counted
        return result | {"cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                         "kernel": after.ru_stime - before.ru_stime, "faults": after.ru_minflt - before.ru_minflt,
                         "steal": stolen_seconds(core) - stolen}
    finally:
        if load is not None:
            load.kill()
            load.wait()


def _trainer_or_hand(method: str, where: str | None, extra: list[str], url: str, args, out: Path,
                     env: dict[str, str] | None = None) -> dict:
    with pinned(STUDENT_CORE, 1), environment(env or {}):
        if where == "hand":
            return run_hand(method, args)
        teacher = {"served": url, "local": f"local:{TEACHER}"}.get(where)  # the others train without a teacher
        flags = [*trainer_flags(method, teacher, args.steps, args.batch_size, args.k, seed=0), "--threads", "1",
                 *extra]
        result = run_trainer(flags, out)
        summary = json.loads((out / "summary.json").read_text())
        return result | {"teacher_wait": summary["teacher_wait_seconds"],
                         "depth": summary.get("prefetch_depth_max"), "teacher_images": summary["teacher_images"]}


def main(argv=None) -> None:
    global STUDENT_CORE, TEACHER_CORE
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("grpc", "triton"), default="grpc")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--k", type=int, default=48)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    p.add_argument("--student-core", type=int, default=min(STUDENT_CORE),
                   help="the core every trainer runs on (on a larger machine: one that shares no cache with "
                        "the teacher's)")
    p.add_argument("--teacher-core", type=int, default=min(TEACHER_CORE), help="the core the server runs on")
    p.add_argument("--warmup-steps", type=int, default=30,
                   help="a KD run of this many steps before the rounds, not counted: the server's first "
                        "batches are slower (0: none)")
    args = p.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    if sorted(set(arms) - set(ARMS)):
        p.error(f"unknown arm(s) {sorted(set(arms) - set(ARMS))}; choose from {', '.join(ARMS)}")
    STUDENT_CORE, TEACHER_CORE = {args.student_core}, {args.teacher_core}
    if STUDENT_CORE == TEACHER_CORE or not STUDENT_CORE | TEACHER_CORE <= os.sched_getaffinity(0):
        p.error(f"needs two different cores this process may use (two boxes on one machine), got "
                f"{args.student_core} and {args.teacher_core}, of {sorted(os.sched_getaffinity(0))}")
    results: dict[str, list[dict]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w") as log:
        proc, url = served(args.backend, log)
        try:
            if args.warmup_steps:
                _trainer_or_hand("kd", "served", [], url, argparse.Namespace(**{**vars(args), "steps": args.warmup_steps}),
                                 Path(tmp) / "warmup")
            for r in range(args.rounds):
                for arm in arms:
                    res = one_arm(arm, url, args, Path(tmp) / f"{arm}-{r}")
                    results[arm].append(res)
                    print(f"round {r + 1}/{args.rounds} {arm}: {res['loop_seconds']:.2f} s "
                          f"(core {min(STUDENT_CORE)} stolen {res['steal']:.2f} s)", flush=True)
        finally:
            from common.launch import stop_teacher

            stop_teacher(proc)
    med = {a: statistics.median(x["loop_seconds"] for x in results[a]) for a in arms}
    base = med.get("ce")
    print(f"\n{args.steps} steps of batch {args.batch_size}, resnet20 -> resnet8, Fashion-MNIST, --workers 0; "
          f"trainer on core {args.student_core} (1 thread), {args.backend} teacher on core {args.teacher_core} "
          f"(1 thread), caches they share: {shared_cache(args.student_core, args.teacher_core)}; median of "
          f"{args.rounds} rounds ({time.strftime('%Y-%m-%d')})")
    print("| arm | loop s per round | median s | vs ce | process CPU s (kernel) | page faults | phases: data / "
          "uncertainty+mixing / teacher wait / student s | stolen s | steps ahead (most) | teacher images |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for a in arms:
        rounds = ", ".join(f"{x['loop_seconds']:.2f}" for x in results[a])
        ratio = f"{med[a] / base:.3f}" if base else "-"
        first = results[a][0]
        phase = lambda *names: statistics.median(sum(x["phases"].get(n, 0.0) for n in names)  # noqa: E731
                                                 for x in results[a])
        phases = (f"{phase('data'):.2f} / {phase('uncertainty', 'mixing'):.2f} / {phase('teacher'):.2f} / "
                  f"{phase('student'):.2f}")
        cpu, steal, kernel, faults = (statistics.median(x[key] for x in results[a])
                                      for key in ("cpu", "steal", "kernel", "faults"))
        depth = "-" if first.get("depth") is None else first["depth"]
        print(f"| {a} | {rounds} | {med[a]:.2f} | {ratio} | {cpu:.1f} ({kernel:.2f}) | {faults:,.0f} | {phases} | "
              f"{steal:.2f} | {depth} | {first.get('teacher_images', '-')} |")
    pairs = [("kd", "ce"), ("kd", "ce-busy"), ("ce-busy", "ce"), ("ce-neighbour", "ce"), ("kd", "ce-neighbour"),
             ("ce-neighbour-b8", "ce"), ("ce-neighbour", "ce-neighbour-b8"),
             ("unix", "unix-local"), ("kd", "kd-hand"),
             ("kd", "kd-prefetch0"),
             ("ce", "ce-system-malloc"), ("kd", "kd-system-malloc"), ("kd-system-malloc", "ce-system-malloc")]
    for a, b in pairs:
        if a in med and b in med:
            ratios = [x["loop_seconds"] / y["loop_seconds"] for x, y in zip(results[a], results[b])]
            print(f"{a} / {b}: ratio of medians {med[a] / med[b]:.3f}; paired by round: {paired_ratio(ratios)}, "
                  f"median {statistics.median(ratios):.3f}, each {', '.join(f'{q:.3f}' for q in ratios)}")
            quiet = [q for q, x, y in zip(ratios, results[a], results[b]) if is_quiet(x) and is_quiet(y)]
            if quiet:
                print(f"    in the {len(quiet)} of {len(ratios)} rounds where neither lost over "
                      f"{QUIET:.0%} of its loop to steal: {paired_ratio(quiet)}")


QUIET = 0.02  # a round is quiet if the hypervisor stole under 2 % of each arm's loop from the student's core


def is_quiet(arm: dict) -> bool:
    """Steal is time the core did not run at all. It comes in bursts when the host is busy, and it hits an
    arm whose core idles (a trainer waiting on the teacher lets its vCPU halt, and a busy host is slow to
    give it back) more than one that computes without a break, so such rounds are reported apart."""
    return arm["steal"] < QUIET * arm["loop_seconds"]


def paired_ratio(ratios: list[float]) -> str:
    """The geometric mean of per-round ratios with its 95 % interval (a t interval on their logarithms):
    rounds run minutes apart on a drifting machine, so only the arms within one round are compared."""
    if len(ratios) < 2:
        return f"{ratios[0]:.3f} (one round: no interval)"
    d = paired_difference([math.log(q) for q in ratios], [0.0] * len(ratios))
    return f"geometric mean {math.exp(d.mean):.3f} [{math.exp(d.low):.3f}, {math.exp(d.high):.3f}]"


if __name__ == "__main__":
    main()
