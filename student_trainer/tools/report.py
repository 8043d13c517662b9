"""python -m student_trainer.tools.report RUN_DIR... --out DIR: a table and plots comparing runs.

Reads each run's ``summary.json`` and ``metrics.jsonl`` and writes
``report.md`` (method, k, top-1, teacher images, bytes, measured compute vs
KD, wall time) and two PNGs: top-1 against cumulative teacher images and
against cumulative compute, one line per run.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from common.cli_errors import one_line_errors


@dataclass
class Run:
    name: str
    summary: dict
    epochs: list[dict]


def load_run(run_dir: str | Path, name: str | None = None) -> Run:
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no summary.json (is it a finished run folder?)")
    summary = json.loads(path.read_text())
    metrics = run_dir / "metrics.jsonl"
    epochs = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()] if metrics.exists() else []
    return Run(name or run_dir.name, summary, epochs)


def run_names(dirs: list[str]) -> list[str]:
    """The shortest path tails that tell the runs apart (``kd/seed0`` and ``unix/seed0``)."""
    parts = [Path(d).resolve().parts for d in dirs]
    for depth in range(1, max(map(len, parts)) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(d) for d in dirs]


def _label(run: Run) -> str:
    s = run.summary
    k = f" k={s['k']}/{s['batch_size']}" if 0 < s["k"] < s["batch_size"] else ""
    return f"{run.name} ({s['method']}{k})" if run.name != s["method"] else f"{s['method']}{k}"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(runs: list[Run]) -> str:
    head = ("| run | method | k/N | top-1 (%) | teacher images | bytes sent | bytes received | "
            "compute vs KD | wall (s) | teacher wait (s) |")
    rows = [head, "|" + "---|" * 10]
    for r in runs:
        s = r.summary
        kn = f"{s['k']}/{s['batch_size']}" if s["k"] else "-"
        rows.append(f"| {r.name} | {s['method']} | {kn} | {s['top1']:.2f} | {s['teacher_images']:,} | "
                    f"{s['bytes_sent']:,} | {s['bytes_received']:,} | {_num(s.get('compute_vs_kd'), '.3f')} | "
                    f"{s['wall_seconds']:.0f} | {s['teacher_wait_seconds']:.0f} |")
    return "\n".join(rows)


def plot(runs: list[Run], x_key: str, x_label: str, title: str, path: Path, scale: float = 1.0,
         teacher_runs_only: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in runs:
        if teacher_runs_only and not r.summary["k"]:
            continue  # no teacher images: nothing to place on this axis
        points = [(e[x_key] / scale, e["top1"]) for e in r.epochs if x_key in e]
        if not points:
            continue
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", label=_label(r))
    ax.set_title(title)
    ax.set_xlabel(x_label)
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(runs: list[Run], out: str | Path, title: str = "Distillation runs") -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    p1 = plot(runs, "teacher_images", "teacher images queried (cumulative)",
              "Top-1 vs teacher images", out / "top1_vs_teacher_images.png", teacher_runs_only=True)
    p2 = plot(runs, "compute_flops", "training compute, teacher + student (GFLOPs, cumulative)",
              "Top-1 vs measured compute", out / "top1_vs_compute.png", scale=1e9)
    md = (f"# {title}\n\n{table(runs)}\n\n"
          "compute vs KD: measured FLOPs of this run over what KD would spend on the same images, "
          "N·(F_t + F_s + B_s) per step.\n\n"
          f"![top-1 vs teacher images]({p1.name})\n\n![top-1 vs compute]({p2.name})\n")
    path = out / "report.md"
    path.write_text(md)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m student_trainer.tools.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="report")
    p.add_argument("--title", default="Distillation runs")
    args = p.parse_args(argv)
    with one_line_errors("report"):
        path = write_report([load_run(d, name) for d, name in zip(args.runs, run_names(args.runs))],
                            args.out, args.title)
    print(path.read_text().split("\n\n![")[0])
    print(f"\nwrote {path} and plots in {path.parent}")


if __name__ == "__main__":
    main()
