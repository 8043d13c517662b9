"""python -m student_trainer.tools.demo: serve a teacher, distil two students (kd, unix), compare.

The teacher runs as its own process behind the gRPC server, exactly as on a
separate GPU box; the students talk to it over localhost. At the end the two
summaries are printed side by side. Each demo replaces the previous one's runs
(``OUT/kd``, ``OUT/unix``: the trainer's ``--overwrite``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common.cli_errors import one_line_errors
from common.launch import served_teacher
from student_trainer.engine.summary import format_summary


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m student_trainer.tools.demo", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="teacher checkpoint (make teacher writes one)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--arch", default="resnet8", help="student architecture")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--workers", type=int, default=1)
    args, extra = p.parse_known_args(argv)
    with one_line_errors("demo"):
        if not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"teacher checkpoint {args.checkpoint} not found (run `make teacher`)")
        from student_trainer.cli import main as train

        with served_teacher("--checkpoint", args.checkpoint) as (_, port):
            summaries = []
            for method in ("kd", "unix"):
                print(f"\n=== {method}: student {args.arch} distilled from the served teacher ===", flush=True)
                flags = ["--method", method, "--teacher-url", f"grpc://127.0.0.1:{port}",
                         "--dataset", args.dataset, "--arch", args.arch, "--epochs", str(args.epochs),
                         "--milestones", "", "--workers", str(args.workers),
                         "--out", f"{args.out}/{method}", "--overwrite", *extra]
                if args.train_size:
                    flags += ["--train-size", str(args.train_size)]
                summaries.append(train(flags))
        print("\n=== kd vs unix, side by side ===")
        print(format_summary(*summaries))
        print(what_it_shows(*summaries))


def _ratio(unix: dict, kd: dict, key: str) -> str:
    return f"{unix[key] / kd[key]:.2f}" if unix.get(key) is not None and kd.get(key) else "-"


def what_it_shows(kd: dict, unix: dict) -> str:
    """The figures a one-epoch demo can carry, and the one it cannot."""
    counted = unix["teacher_images"] == unix["server_images_delta"] and kd["teacher_images"] == kd["server_images_delta"]
    return "\n".join([
        "",
        "What this shows:",
        f"- The counted saving: unix asked the teacher about {_ratio(unix, kd, 'teacher_images')} of kd's images "
        f"(k/N = {unix['k']}/{unix['batch_size']}), sent {_ratio(unix, kd, 'bytes_sent')} of its bytes and waited "
        f"{_ratio(unix, kd, 'teacher_wait_seconds')} of its teacher time; the server's own count "
        f"{'agrees exactly' if counted else 'DOES NOT agree'} (server_images_delta).",
        f"- compute_vs_kd is the measured-FLOP cost of the step, uncertainty pass included "
        f"({unix['compute_vs_kd']:.3f} of kd here): the cheaper the student next to the teacher, the lower it goes.",
        "- Wall time on one shared CPU is not the teacher box's GPU time: here teacher and student share 2 cores.",
        "- top-1 after one short epoch says nothing about final accuracy (it moves by points from seed to seed);",
        "  the comparison over several seeds is in docs/results.md "
        "(make reproduce).",
    ])


if __name__ == "__main__":
    main()
