"""python -m student_trainer.tools.experiment CONFIG.toml: a whole comparison from one config file.

1. trains the teacher with ``--method ce`` (or reuses the cached one) and records its top-1;
2. serves it with ``teacher_server`` (our gRPC backend) on localhost;
3. trains every run group of the config (method x seeds, ablations) against it;
4. writes ``results.json`` and ``results.md``: per group the mean and std of last and
   best top-1, teacher images, bytes, measured compute against the reference group,
   wall time per epoch; the paired per-seed differences the config names (``[[pairs]]``)
   with 95 % intervals; the verdict sentence (``[verdict]``); the convergence check of
   one group (``converged``); the frontier of groups that name a ``series``; plots.

Each run leaves a record beside the results (``runs/GROUP/seedS/``: summary.json,
metrics.jsonl, run.json with the exact flags, teacher hash and commit). A record is
reused only when its flags and teacher match exactly, so an experiment continues on
another machine from committed records and every number can be checked against its
run. ``match_compute = G`` gives a group ``--budget`` = G's measured compute vs KD
(KD with the same FLOPs: fewer steps, the same schedule shape). ``--quick``
applies the config's ``[quick]`` overrides for a smoke check.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import shutil
import tomllib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from common.cli_errors import one_line_errors
from common.launch import served_teacher
from student_trainer.tools.paired import paired_difference
from student_trainer.tools.report import load_run, write_report

log = logging.getLogger("experiment")
RUN_FILES = ("summary.json", "metrics.jsonl")  # what a run record keeps: small, committed with the results


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_trainer(flags: list[str], scratch: Path, threads: int | None) -> dict:
    """One trainer process (``--threads`` torch threads); its output goes to ``scratch/train.log``."""
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    cmd = [sys.executable, "-m", "student_trainer", *flags, "--out", str(scratch), "--no-progress"]
    with open(scratch / "train.log", "w") as log_file:
        code = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env).returncode
    if code:
        lines = (scratch / "train.log").read_text().strip().splitlines()
        raise RuntimeError(f"{scratch}: the trainer failed (exit {code}): {lines[-1] if lines else 'no output'}")
    return json.loads((scratch / "summary.json").read_text())


class NotRecorded(Exception):
    """``--records-only``: this run has no record made with exactly these flags and teacher."""


def _train(flags: list[str], scratch: Path, record: Path, teacher: dict | None = None,
           url: str | None = None, threads: int | None = None, train: bool = True,
           fresh_store: Path | None = None) -> dict:
    """Train one run, or reuse its record when that was made with exactly these flags and teacher.

    ``record`` keeps what is small enough to commit (``summary.json``, ``metrics.jsonl``
    and ``run.json``: flags, teacher, commit); checkpoints stay in ``scratch``. A record
    made with other flags is trained again, never reused.
    """
    provenance = record / "run.json"
    if provenance.is_file() and (record / "summary.json").is_file():
        saved = json.loads(provenance.read_text())
        if saved.get("flags") == flags and saved.get("teacher") == teacher:
            log.info("reusing %s (same flags and teacher)", record)
            return json.loads((record / "summary.json").read_text())
        log.info("%s was made with other flags or another teacher: not reused", record)
    if not train:
        raise NotRecorded(str(record))
    log.info("training %s", record)
    shutil.rmtree(scratch, ignore_errors=True)  # never continue a stale run under new flags
    if fresh_store is not None:  # a run (or a sweep's first) pays its teacher from an empty store
        shutil.rmtree(fresh_store, ignore_errors=True)
    summary = _run_trainer([*flags, *(["--teacher-url", url] if url else [])], scratch, threads)
    record.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if record.resolve() != scratch.resolve():
            shutil.copyfile(scratch / name, record / name)
    provenance.write_text(json.dumps({"flags": flags, "teacher": teacher, "commit": _commit()}, indent=2) + "\n")
    return summary


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
    summary = _train(to_flags({**options, "method": "ce"}), teacher_dir, teacher_dir)
    return teacher_dir / "best.pt", summary


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


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def groups_table(groups: list[dict]) -> str:
    rows = ["| group | query | loss | k/N | seeds | last top-1 (%) | best top-1 (%) | last top-1 per seed | "
            "teacher images | MB sent | compute vs KD | wall s/epoch | teacher wait s/epoch |", "|" + "---|" * 13]
    for g in groups:
        kn = f"{g['k']}/{g['batch_size']}" if g["k"] else "-"
        cvk = "-" if g.get("compute") is None else f"{g['compute']:.3f}"
        rows.append(f"| {g['group']} | {g['query']} | {g['loss']} | {kn} | {len(g['seeds'])} | "
                    f"{_pm(g['top1_mean'], g['top1_std'])} | {_pm(g['best_top1_mean'], g['best_top1_std'])} | "
                    f"{', '.join(f'{v:.2f}' for v in g['top1'])} | {_fmt_int(g['teacher_images'])} | "
                    f"{g['bytes_sent'] / 1e6:.1f} | {cvk} | {g['wall_seconds_per_epoch']:.0f} | "
                    f"{g['teacher_wait_seconds_per_epoch']:.0f} |")
    return "\n".join(rows)


def pairs_table(pairs: list[dict]) -> str:
    rows = ["| a − b | last top-1 difference per seed | mean [95 % CI] | best top-1: mean [95 % CI] | "
            "compute a / b |", "|---|---|---|---|---|"]
    for p in pairs:
        rows.append(f"| {p['a']} − {p['b']} | {', '.join(f'{d:+.2f}' for d in p['last']['diffs'])} | "
                    f"{p['last']['text']} | {p['best']['text']} | {p['compute_ratio']:.3f} |")
    return "\n".join(rows)


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


def frontier_table(groups: list[dict]) -> str:
    rows = ["| series | group | compute vs KD | teacher images | last top-1 (%) |", "|---|---|---|---|---|"]
    for g in sorted((g for g in groups if g.get("series")), key=lambda g: (g["series"], g["compute"] or 0)):
        rows.append(f"| {g['series']} | {g['group']} | {g['compute']:.3f} | {_fmt_int(g['teacher_images'])} | "
                    f"{_pm(g['top1_mean'], g['top1_std'])} |")
    return "\n".join(rows)


def frontier_plot(groups: list[dict], path: Path, title: str) -> Path | None:
    """Top-1 (mean, error bars one standard deviation over seeds) against measured compute, per series."""
    series: dict[str, list[dict]] = {}
    for g in groups:
        if g.get("series") and g.get("compute") is not None:
            series.setdefault(g["series"], []).append(g)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, members in series.items():
        members.sort(key=lambda g: g["compute"])
        ax.errorbar([g["compute"] for g in members], [g["top1_mean"] for g in members],
                    yerr=[g["top1_std"] for g in members], marker="o", capsize=3, label=name)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("measured training compute, teacher + student (fraction of KD's)")
    ax.set_ylabel("test top-1, last epoch (%): mean ± std over seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def sweeps_table(groups: list[dict], sweeps: list[dict], reference: str | None) -> str:
    """Per seed of a shared-store group: what it asked the teacher, its compute against the reference's."""
    reference = next((g for g in groups if g["group"] == reference), None)
    rows = ["| group | seed | teacher images | compute vs KD | last top-1 (%) |", "|---|---|---|---|---|"]
    for g in sweeps:
        for i, seed in enumerate(g["seeds"]):
            ratio = (g["compute_flops_per_seed"][i] / reference["compute_flops"]) if reference else float("nan")
            rows.append(f"| {g['group']} | {seed} | {_fmt_int(g['teacher_images_per_seed'][i])} | {ratio:.3f} | "
                        f"{g['top1'][i]:.2f} |")
    return "\n".join(rows)


def results_markdown(results: dict) -> str:
    t, s = results["teacher"], results["student"]
    conv = results.get("convergence")
    facts = (f"Teacher: {t['arch']}, top-1 {t['top1']:.2f}% ({t['flops_per_image'] / 1e6:.1f} MFLOPs/image); "
             f"student: {s['arch']} ({s['flops_per_image'] / 1e6:.1f} MFLOPs/image forward, "
             f"{s['backward_flops_per_image'] / 1e6:.1f} backward); FLOP ratio teacher/student "
             f"{t['flops_per_image'] / s['flops_per_image']:.1f}.")
    if conv and conv["moves"]:
        ref = next(g for g in results["groups"] if g["group"] == conv["group"])
        facts += (f" The {conv['group']} student moved at most {conv['max_move']:.2f} points over its last 20 % "
                  f"of epochs (per seed: {', '.join(f'{v:.2f}' for v in conv['moves'].values())}); the teacher is "
                  f"{t['top1'] - ref['top1_mean']:.2f} points above it.")
    parts = [f"# {results['name']}", results.get("description", "").strip(), facts,
             "## Groups", groups_table(results["groups"]),
             "compute vs KD: the group's measured FLOPs (teacher forward + student forward and backward) over "
             "the reference KD group's. Wall times are from a shared 2-core machine: compare FLOPs."]
    if results.get("pairs"):
        parts += ["## Paired differences (a − b, same seeds, 95 % CI)", pairs_table(results["pairs"])]
    if results.get("verdict"):
        parts.append(results["verdict"])
    if results.get("not_run"):
        parts.append(f"Not run yet (no record with these exact flags for every seed; `make reproduce` trains "
                     f"them and reuses the rest): {', '.join(results['not_run'])}.")
    sweeps = [g for g in results["groups"] if g.get("options", {}).get("answer_store") == "shared"]
    if sweeps:
        parts += ["## Sweeps: one answer store for every seed, trained in order", sweeps_table(results["groups"], sweeps, results.get("reference"))]
    if any(g.get("series") for g in results["groups"]):
        parts += ["## Frontier: top-1 against measured compute", frontier_table(results["groups"]),
                  "![frontier](figures/frontier.png)"]
    parts.append(f"Reproduce: `{results['command']}` (commit {results['commit']}, {results['machine']}); "
                 f"every number above comes from the run files under `runs/` beside this page "
                 f"(summary.json, metrics.jsonl, run.json with the exact flags and commit).")
    return "\n\n".join(p for p in parts if p) + "\n"


def _group_options(group: dict, finished: dict[str, list[dict]]) -> dict:
    """The group's trainer options; ``match_compute = G`` becomes ``--budget`` = G's measured compute vs KD."""
    options = {k: v for k, v in group.items()
               if k not in ("name", "seeds", "series", "match_compute", "answer_store")}
    target = group.get("match_compute")
    if target:
        if target not in finished:
            raise ValueError(f"group {group['name']}: match_compute names {target!r}, which must come before it")
        options["budget"] = round(statistics.fmean(s["compute_vs_kd"] for s in finished[target]), 4)
    return options


def _asks_teacher(flags: list[str]) -> bool:
    from student_trainer.cli import build_parser, resolve_method
    from student_trainer.distill import loss_needs_teacher

    args, _ = build_parser().parse_known_args(flags)
    resolve_method(args)
    return loss_needs_teacher(args.loss)


def train_groups(config: dict, base: list[str], out: Path, records: Path, teacher: dict, url: str | None,
                 jobs: int, threads: int | None) -> dict[str, list[dict | None]]:
    """Every (group, seed) run, ``jobs`` at a time, in config order.

    A ``match_compute`` group waits for the group it matches; that group's runs
    were queued first, so they are running or done when it waits (no deadlock).
    Without ``url`` (``--records-only``) nothing trains: a run without its record is None.
    """
    runs: dict[str, list[Future]] = {}

    def one(group: dict, seed: int) -> dict | None:
        target = group.get("match_compute")
        finished = {target: [f.result() for f in runs[target]]} if target in runs else {}
        if any(s is None for s in finished.get(target, [])):
            return None  # what it matches was not run: nor is it
        flags = [*base, *to_flags(_group_options(group, finished)), "--seed", str(seed)]
        name = group["name"]
        # answer_store = "own": each run its own, empty store; "shared": the group's seeds one after another on
        # one store (a sweep: the first pays the teacher, the others find its answers)
        mode, fresh = group.get("answer_store"), None
        if mode not in (None, "own", "shared"):
            raise ValueError(f"group {name}: answer_store is 'own' or 'shared', not {mode!r}")
        if mode:
            store = out / "stores" / name / (f"seed{seed}" if mode == "own" else "shared")
            flags += ["--answer-store", str(store)]
            fresh = store if mode == "own" or seed == group.get("seeds", [0])[0] else None
        # A run that asks the teacher nothing (ce) does not depend on it: its record holds across teachers.
        asks = _asks_teacher(flags)
        try:
            return _train(flags, out / name / f"seed{seed}", records / name / f"seed{seed}",
                          teacher if asks else None, url if asks else None, threads, train=url is not None,
                          fresh_store=fresh)
        except NotRecorded:
            return None

    with ThreadPoolExecutor(jobs) as pool:
        try:
            for group in config["groups"]:
                seeds = group.get("seeds", [0])
                if group.get("answer_store") == "shared":  # a sweep: its seeds in order, in one worker
                    runs[group["name"]] = [Future() for _ in seeds]
                    pool.submit(_in_order, one, group, seeds, runs[group["name"]])
                else:
                    runs[group["name"]] = [pool.submit(one, group, seed) for seed in seeds]
            return {name: [f.result() for f in fs] for name, fs in runs.items()}
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _in_order(one, group: dict, seeds: list[int], futures: list[Future]) -> None:
    """Train a group's seeds one after another, each result into its future (a failure into this and the rest)."""
    for i, seed in enumerate(seeds):
        try:
            futures[i].set_result(one(group, seed))
        except BaseException as e:
            for f in futures[i:]:
                f.set_exception(e)
            return


def run_experiment(config: dict, command: str, jobs: int = 1, threads: int | None = None,
                   records_only: bool = False) -> dict:
    out = Path(config.get("out", "runs/experiment"))
    results_dir = Path(config.get("results", out))
    records = results_dir / "runs"
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, teacher_summary = train_teacher(config, out)
    teacher_id = {"checkpoint": str(checkpoint), "sha256": _sha256(checkpoint)}
    base = to_flags(config["student"])
    if records_only:
        finished = train_groups(config, base, out, records, teacher_id, None, jobs, threads)
    else:
        with open(out / "teacher_server.log", "a") as server_log, \
                served_teacher("--checkpoint", str(checkpoint), log_file=server_log) as (_, port):
            finished = train_groups(config, base, out, records, teacher_id, f"grpc://127.0.0.1:{port}", jobs,
                                    threads)
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
        "command": command, "commit": _commit(),
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
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(example_runs, results_dir / "figures", title=f"{config['name']}: seed 0 of each group")
    frontier_plot(groups, results_dir / "figures" / "frontier.png", config["name"])
    (results_dir / "results.md").write_text(results_markdown(results)
                                            + "\n![top-1 vs teacher images](figures/top1_vs_teacher_images.png)\n"
                                            + "\n![top-1 vs compute](figures/top1_vs_compute.png)\n")
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m student_trainer.tools.experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="an experiment config (experiments/*.toml)")
    p.add_argument("--quick", action="store_true", help="apply the config's [quick] overrides")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (each its own process)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: CPU cores / --jobs)")
    p.add_argument("--records-only", action="store_true",
                   help="train nothing: write the results from the runs already recorded, listing the rest")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with one_line_errors("experiment"):
        config = load_config(args.config, args.quick)
        command = "python -m student_trainer.tools.experiment " + shlex.join(sys.argv[1:] if argv is None else argv)
        if args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        results = run_experiment(config, command, args.jobs, threads, args.records_only)
    print(results_markdown(results))


if __name__ == "__main__":
    main()
