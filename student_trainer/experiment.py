"""python -m student_trainer.experiment CONFIG.toml: a whole comparison from one config file.

1. trains the teacher with ``--method ce`` (or reuses the cached one) and records its top-1;
2. serves it with ``teacher_server`` (our gRPC backend) on localhost;
3. trains every run group of the config (method x seeds, ablations) against it;
4. writes ``results.json`` and ``results.md`` (mean and std of top-1 per group, teacher
   images, bytes, measured compute vs KD, wall time per epoch, command and commit) and
   the report plots.

Finished runs (their ``summary.json`` exists) are reused, so an interrupted
experiment continues where it stopped. ``--quick`` applies the config's
``[quick]`` overrides for a smoke check.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path

import torch

from common.cli_errors import one_line_errors
from student_trainer.report import load_run, write_report
from teacher_server.launch import served_teacher

log = logging.getLogger("experiment")


def load_config(path: str, quick: bool = False) -> dict:
    with open(path, "rb") as f:
        config = tomllib.load(f)
    for key in ("name", "teacher", "student", "groups"):
        if key not in config:
            raise ValueError(f"{path}: the config needs a '{key}' entry")
    if quick:
        overrides = config.get("quick", {})
        if "out" in config["teacher"] and "out" not in overrides.get("teacher", {}):
            # never let a quick teacher land in (and later be reused as) the full one's folder
            config["teacher"]["out"] += "-quick"
        for section in ("teacher", "student"):
            config[section] = {**config[section], **overrides.get(section, {})}
        if "seeds" in overrides:
            for group in config["groups"]:
                group["seeds"] = group.get("seeds", [0])[: overrides["seeds"]]
        config["out"] = overrides.get("out", config.get("out", "runs/experiment") + "-quick")
        config["results"] = overrides.get("results", config.get("results", config["out"]))
    return config


def to_flags(options: dict) -> list[str]:
    """{'batch_size': 64, 'milestones': [5, 8], 'no_augment': True} -> trainer flags."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            flags += [flag, ",".join(map(str, value))]
        else:
            flags += [flag, str(value)]
    return flags


def _train(flags: list[str], run_dir: Path) -> dict:
    from student_trainer.cli import main as train

    if (run_dir / "summary.json").is_file():
        log.info("reusing finished run %s", run_dir)
        return json.loads((run_dir / "summary.json").read_text())
    log.info("training %s", run_dir)
    return train([*flags, "--out", str(run_dir), "--no-progress"])


def shipped_teacher(path: Path) -> tuple[Path, dict]:
    """A committed teacher (``[teacher] checkpoint = PATH``): served as it is, its facts read from it."""
    from common.checkpoint import load_checkpoint, model_from_checkpoint
    from common.flops import forward_flops_per_image

    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt)
    return path, {"arch": ckpt["arch"], "top1": ckpt.get("meta", {}).get("top1"),
                  "student_flops_per_image": forward_flops_per_image(model, ckpt["input_shape"])}


def train_teacher(config: dict, out: Path) -> tuple[Path, dict]:
    """Train (or reuse) the teacher; ``[teacher] out`` lets experiments share one."""
    options = dict(config["teacher"])
    if "checkpoint" in options:
        return shipped_teacher(Path(options["checkpoint"]))
    teacher_dir = Path(options.pop("out", out / "teacher"))
    summary = _train(to_flags({**options, "method": "ce"}), teacher_dir)
    return teacher_dir / "best.pt", summary


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(name: str, group: dict, summaries: list[dict]) -> dict:
    top1 = [s["top1"] for s in summaries]
    mean, std = _mean_std(top1)
    first = summaries[0]
    return {
        "group": name, "method": first["method"], "k": first["k"], "batch_size": first["batch_size"],
        "options": {k: v for k, v in group.items() if k not in ("name", "seeds")},
        "seeds": [s["seed"] for s in summaries], "top1": top1, "top1_mean": mean, "top1_std": std,
        "teacher_images": statistics.fmean(s["teacher_images"] for s in summaries),
        "student_images": statistics.fmean(s["student_images"] for s in summaries),
        "bytes_sent": statistics.fmean(s["bytes_sent"] for s in summaries),
        "bytes_received": statistics.fmean(s["bytes_received"] for s in summaries),
        "compute_vs_kd": first["compute_vs_kd"],
        "wall_seconds_per_epoch": statistics.fmean(s["wall_seconds"] / max(s["epochs"], 1e-9) for s in summaries),
        "teacher_wait_seconds_per_epoch": statistics.fmean(
            s["teacher_wait_seconds"] / max(s["epochs"], 1e-9) for s in summaries),
        "time_split": first.get("time_split", {}),
    }


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        return sha + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def results_markdown(results: dict) -> str:
    t, s = results["teacher"], results["student"]
    rows = ["| group | method | k/N | seeds | top-1 mean ± std (%) | top-1 per seed | teacher images | "
            "MB sent | compute vs KD | wall s/epoch | teacher wait s/epoch |", "|" + "---|" * 11]
    for g in results["groups"]:
        kn = f"{g['k']}/{g['batch_size']}" if g["k"] else "-"
        cvk = "-" if g["compute_vs_kd"] is None else f"{g['compute_vs_kd']:.3f}"
        rows.append(f"| {g['group']} | {g['method']} | {kn} | {len(g['seeds'])} | "
                    f"{g['top1_mean']:.2f} ± {g['top1_std']:.2f} | {', '.join(f'{v:.2f}' for v in g['top1'])} | "
                    f"{_fmt_int(g['teacher_images'])} | {g['bytes_sent'] / 1e6:.1f} | {cvk} | "
                    f"{g['wall_seconds_per_epoch']:.0f} | {g['teacher_wait_seconds_per_epoch']:.0f} |")
    verdict = results.get("verdict", "")
    return (f"# {results['name']}\n\n{results.get('description', '').strip()}\n\n"
            f"Teacher: {t['arch']}, top-1 {t['top1']:.2f}% ({t['flops_per_image'] / 1e6:.1f} MFLOPs/image); "
            f"student: {s['arch']} ({s['flops_per_image'] / 1e6:.1f} MFLOPs/image forward, "
            f"{s['backward_flops_per_image'] / 1e6:.1f} backward); FLOP ratio teacher/student "
            f"{t['flops_per_image'] / s['flops_per_image']:.1f}.\n\n"
            + "\n".join(rows) + "\n\n" + (verdict + "\n\n" if verdict else "")
            + f"Reproduce: `{results['command']}` (commit {results['commit']}, {results['machine']}).\n")


def verdict(groups: list[dict]) -> str:
    by = {g["group"]: g for g in groups}
    kd, unix = by.get("kd"), by.get("unix")
    if not kd or not unix:
        return ""
    diff = unix["top1_mean"] - kd["top1_mean"]
    pooled = (kd["top1_std"] ** 2 + unix["top1_std"] ** 2) ** 0.5
    spread = (f", {abs(diff) / pooled:.1f} pooled standard deviations" if pooled > 0
              else ", one seed each: no spread to compare with")
    held = "held" if diff >= 0 else "did not hold"
    return (f"**UNIX >= KD {held}**: UNIX {unix['top1_mean']:.2f} vs KD {kd['top1_mean']:.2f} top-1 "
            f"({diff:+.2f} points{spread}), at "
            f"{unix['compute_vs_kd']:.1%} of KD's measured compute and "
            f"{unix['teacher_images'] / max(kd['teacher_images'], 1):.1%} of its teacher images.")


def run_experiment(config: dict, command: str) -> dict:
    out = Path(config.get("out", "runs/experiment"))
    results_dir = Path(config.get("results", out))
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, teacher_summary = train_teacher(config, out)
    base = to_flags(config["student"])
    groups, example_runs = [], []
    with open(out / "teacher_server.log", "a") as server_log, \
            served_teacher("--checkpoint", str(checkpoint), log_file=server_log) as (_, port):
        url = f"grpc://127.0.0.1:{port}"
        for group in config["groups"]:
            name = group["name"]
            options = {k: v for k, v in group.items() if k not in ("name", "seeds")}
            summaries = []
            for seed in group.get("seeds", [0]):
                run_dir = out / name / f"seed{seed}"
                # A run whose loss asks the teacher nothing (ce) never connects to it.
                flags = [*base, *to_flags(options), "--seed", str(seed), "--teacher-url", url]
                summaries.append(_train(flags, run_dir))
            example_runs.append(load_run(out / name / f"seed{group.get('seeds', [0])[0]}", name))
            groups.append(aggregate(name, group, summaries))
    student_summary = example_runs[0].summary
    results = {
        "name": config["name"], "description": config.get("description", ""),
        "command": command, "commit": _commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        # The teacher's forward FLOPs, measured when it was itself trained.
        "teacher": {"arch": teacher_summary["arch"], "top1": teacher_summary["top1"],
                    "flops_per_image": teacher_summary["student_flops_per_image"]},
        "student": {"arch": student_summary["arch"], "flops_per_image": student_summary["student_flops_per_image"],
                    "backward_flops_per_image": student_summary["student_backward_flops_per_image"]},
        "groups": groups,
    }
    results["verdict"] = verdict(groups)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(example_runs, results_dir / "figures", title=f"{config['name']}: seed 0 of each group")
    (results_dir / "results.md").write_text(results_markdown(results)
                                            + "\n![top-1 vs teacher images](figures/top1_vs_teacher_images.png)\n"
                                            + "\n![top-1 vs compute](figures/top1_vs_compute.png)\n")
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m student_trainer.experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="an experiment config (experiments/*.toml)")
    p.add_argument("--quick", action="store_true", help="apply the config's [quick] overrides")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with one_line_errors("experiment"):
        config = load_config(args.config, args.quick)
        command = "python -m student_trainer.experiment " + shlex.join(sys.argv[1:] if argv is None else argv)
        results = run_experiment(config, command)
    print(results_markdown(results))


if __name__ == "__main__":
    main()
