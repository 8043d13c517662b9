"""The numbers of ``results.json``: each group over its seeds, paired differences, the verdict, convergence.

Everything here follows from the run summaries and records alone, so ``--records-only`` rebuilds the
committed results from the committed records.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import asdict
from pathlib import Path

import torch

from student_trainer.tools.experiment.records import current_commit
from student_trainer.tools.paired import paired_difference
from student_trainer.tools.report import Run, load_run


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(name: str, group: dict, summaries: list[dict]) -> dict:
    top1, best = [s["top1"] for s in summaries], [s["best_top1"] for s in summaries]
    first = summaries[0]
    return {
        "group": name, "method": first["method"], "query": first.get("query"), "loss": first.get("loss"),
        "k": first["k"], "batch_size": first["batch_size"], "series": group.get("series"),
        "options": {k: v for k, v in group.items() if k not in ("name", "seeds")},
        "seeds": [s["seed"] for s in summaries], "top1": top1, "top1_mean": _mean_std(top1)[0],
        "top1_std": _mean_std(top1)[1], "best_top1": best, "best_top1_mean": _mean_std(best)[0],
        "best_top1_std": _mean_std(best)[1],
        "teacher_images": statistics.fmean(s["teacher_images"] for s in summaries),
        "teacher_images_per_seed": [s["teacher_images"] for s in summaries],
        "compute_flops_per_seed": [s["compute_flops"] for s in summaries],
        "student_images": statistics.fmean(s["student_images"] for s in summaries),
        "steps": statistics.fmean(s["steps"] for s in summaries),
        "bytes_sent": statistics.fmean(s["bytes_sent"] for s in summaries),
        "bytes_received": statistics.fmean(s["bytes_received"] for s in summaries),
        "compute_flops": statistics.fmean(s["compute_flops"] for s in summaries),
        "compute_vs_kd": first["compute_vs_kd"],
        "wall_seconds_per_epoch": statistics.fmean(s["wall_seconds"] / max(s["epochs"], 1e-9) for s in summaries),
        "teacher_wait_seconds_per_epoch": statistics.fmean(
            s["teacher_wait_seconds"] / max(s["epochs"], 1e-9) for s in summaries),
        "time_split": first.get("time_split", {}),
    }


def against_reference(groups: list[dict], reference: str | None) -> None:
    """``compute``: a group's measured FLOPs over the reference group's (KD on the same run length).

    A run's own ``compute_vs_kd`` compares it with KD on the images it drew; a
    compute-matched baseline draws fewer, so the table compares totals instead.
    """
    ref = next((g for g in groups if g["group"] == reference), None)
    for g in groups:
        if ref is not None:
            g["compute"] = g["compute_flops"] / ref["compute_flops"] if ref["compute_flops"] else None
        else:
            g["compute"] = g["compute_vs_kd"]


def paired(groups: list[dict], a: str, b: str) -> dict:
    by = {g["group"]: g for g in groups}
    if a not in by or b not in by:
        raise ValueError(f"pair {a} - {b}: no group named {(a if a not in by else b)!r}")
    ga, gb = by[a], by[b]
    seeds = [s for s in ga["seeds"] if s in gb["seeds"]]  # paired on the seeds both ran
    if len(seeds) < 2:
        raise ValueError(f"pair {a} - {b}: the groups share fewer than 2 seeds ({ga['seeds']} vs {gb['seeds']})")

    def on(group, key):
        return [group[key][group["seeds"].index(s)] for s in seeds]
    last = paired_difference(on(ga, "top1"), on(gb, "top1"))
    best = paired_difference(on(ga, "best_top1"), on(gb, "best_top1"))
    return {"a": a, "b": b, "seeds": seeds,
            "last": {**asdict(last), "text": str(last), "verdict": last.verdict},
            "best": {**asdict(best), "text": str(best), "verdict": best.verdict},
            "compute_ratio": ga["compute_flops"] / gb["compute_flops"] if gb["compute_flops"] else float("nan")}


def verdict(groups: list[dict], pairs: list[dict], spec: dict | None) -> str:
    """One sentence on the pair the config names as the question, whatever its sign."""
    if not spec:
        return ""
    p = next((p for p in pairs if (p["a"], p["b"]) == (spec["a"], spec["b"])), None) or \
        paired(groups, spec["a"], spec["b"])
    by = {g["group"]: g for g in groups}
    ga, gb = by[p["a"]], by[p["b"]]
    word = {"higher": "better than", "lower": "worse than",
            "no detectable difference": "not distinguishable from"}[p["last"]["verdict"]]
    return (f"**Verdict: {p['a']} was {word} {p['b']}** at {p['compute_ratio']:.2f}x its measured compute: "
            f"last-epoch top-1 {ga['top1_mean']:.2f} vs {gb['top1_mean']:.2f} %, paired difference "
            f"{p['last']['text']} points over {len(p['seeds'])} seeds (95 % CI).")


def convergence(name: str | None, out_records: Path) -> dict | None:
    """How far a group's top-1 moved over its last 20 % of epochs, seed by seed (max − min)."""
    if not name:
        return None
    moves = {}
    for seed_dir in sorted((out_records / name).glob("seed*")):
        epochs = [json.loads(l) for l in (seed_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
        last = max(e["epoch"] for e in epochs)
        window = [e["top1"] for e in epochs if e["epoch"] > 0.8 * last and e["top1"] is not None]
        if len(window) < 2:  # --eval-every left fewer than two evaluations there: no movement to measure
            continue
        moves[seed_dir.name] = max(window) - min(window)
    return {"group": name, "moves": moves, "max_move": max(moves.values()) if moves else None}


def build_results(config: dict, finished: dict[str, list[dict | None]], records: Path, teacher_summary: dict,
                  teacher_id: dict, command: str) -> tuple[dict, list[Run]]:
    """``results.json`` from the groups whose every seed finished (the rest listed as not run), and each such
    group's first run, whose per-epoch curves the figures draw."""
    done = [g for g in config["groups"] if all(s is not None for s in finished[g["name"]])]
    not_run = [g["name"] for g in config["groups"] if g not in done]
    if not done:
        raise ValueError("no group has a record for every seed yet: run without --records-only")
    names = {g["name"] for g in done}
    groups = [aggregate(g["name"], g, finished[g["name"]]) for g in done]
    example_runs = [load_run(records / g["name"] / f"seed{g.get('seeds', [0])[0]}", g["name"]) for g in done]
    against_reference(groups, config.get("reference"))
    pairs = [paired(groups, p["a"], p["b"]) for p in config.get("pairs", []) if {p["a"], p["b"]} <= names]
    spec = config.get("verdict")
    student_summary = example_runs[0].summary
    results = {
        "name": config["name"], "description": config.get("description", ""),
        "command": command, "commit": current_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        # The teacher's forward FLOPs, measured when it was itself trained.
        "teacher": {"arch": teacher_summary["arch"], "top1": teacher_summary["top1"],
                    "flops_per_image": teacher_summary["student_flops_per_image"], **teacher_id},
        "student": {"arch": student_summary["arch"], "flops_per_image": student_summary["student_flops_per_image"],
                    "backward_flops_per_image": student_summary["student_backward_flops_per_image"]},
        "groups": groups, "pairs": pairs, "not_run": not_run, "reference": config.get("reference"),
        "convergence": convergence(config.get("converged") if config.get("converged") in names else None,
                                   records),
    }
    results["verdict"] = verdict(groups, pairs, spec if spec and {spec["a"], spec["b"]} <= names else None)
    return results, example_runs
