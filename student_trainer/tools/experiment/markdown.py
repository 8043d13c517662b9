"""``results.md``: the results of an experiment as tables and sentences, written from ``results.json`` alone."""
from __future__ import annotations

# The per-epoch plots tools.report draws of each group's first seed, linked below the page.
REPORT_FIGURES = ("\n![top-1 vs teacher images](figures/top1_vs_teacher_images.png)\n"
                  "\n![top-1 vs compute](figures/top1_vs_compute.png)\n")


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


def frontier_table(groups: list[dict]) -> str:
    rows = ["| series | group | compute vs KD | teacher images | last top-1 (%) |", "|---|---|---|---|---|"]
    for g in sorted((g for g in groups if g.get("series")), key=lambda g: (g["series"], g["compute"] or 0)):
        rows.append(f"| {g['series']} | {g['group']} | {g['compute']:.3f} | {_fmt_int(g['teacher_images'])} | "
                    f"{_pm(g['top1_mean'], g['top1_std'])} |")
    return "\n".join(rows)


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


def _facts(results: dict) -> str:
    """The teacher and student in one paragraph, with how far the ``converged`` group still moved."""
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
    return facts


def results_markdown(results: dict) -> str:
    """The page without its per-epoch figures (what the command prints)."""
    parts = [f"# {results['name']}", results.get("description", "").strip(), _facts(results),
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
        parts += ["## Sweeps: one answer store for every seed, trained in order",
                  sweeps_table(results["groups"], sweeps, results.get("reference"))]
    if any(g.get("series") for g in results["groups"]):
        parts += ["## Frontier: top-1 against measured compute", frontier_table(results["groups"]),
                  "![frontier](figures/frontier.png)"]
    parts.append(f"Reproduce: `{results['command']}` (commit {results['commit']}, {results['machine']}); "
                 f"every number above comes from the run files under `runs/` beside this page "
                 f"(summary.json, metrics.jsonl, run.json with the exact flags and commit).")
    return "\n\n".join(p for p in parts if p) + "\n"


def results_page(results: dict) -> str:
    """``results.md``: the page with the per-epoch figures linked below it."""
    return results_markdown(results) + REPORT_FIGURES
