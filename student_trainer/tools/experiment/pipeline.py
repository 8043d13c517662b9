"""An experiment end to end: its teacher, the teacher served, every group trained (or reused), the results."""
from __future__ import annotations

import json
from pathlib import Path

from common.launch import served_teacher
from student_trainer.tools.experiment.config import to_flags
from student_trainer.tools.experiment.figures import write_figures
from student_trainer.tools.experiment.markdown import results_page
from student_trainer.tools.experiment.results import build_results
from student_trainer.tools.experiment.runner import train_groups
from student_trainer.tools.experiment.teacher import teacher_identity, train_teacher


def run_experiment(config: dict, command: str, jobs: int = 1, threads: int | None = None,
                   records_only: bool = False) -> dict:
    """Train what has no record, then write ``results.json``, ``results.md`` and the figures; the results."""
    out = Path(config.get("out", "runs/experiment"))
    results_dir = Path(config.get("results", out))
    records = results_dir / "runs"
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, teacher_summary = train_teacher(config, out)
    teacher_id = teacher_identity(checkpoint)
    base = to_flags(config["student"])
    if records_only:  # no teacher served: a run without its record stays untrained
        finished = train_groups(config, base, out, records, teacher_id, None, jobs, threads)
    else:
        with open(out / "teacher_server.log", "a") as server_log, \
                served_teacher("--checkpoint", str(checkpoint), log_file=server_log) as (_, port):
            finished = train_groups(config, base, out, records, teacher_id, f"grpc://127.0.0.1:{port}", jobs,
                                    threads)
    results, example_runs = build_results(config, finished, records, teacher_summary, teacher_id, command)
    write_results(results, example_runs, results_dir, config["name"])
    return results


def write_results(results: dict, example_runs: list, results_dir: Path, name: str) -> None:
    """``results.json``, the figures under ``figures/`` and ``results.md``, which links them."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_figures(example_runs, results["groups"], results_dir / "figures", name)
    (results_dir / "results.md").write_text(results_page(results))
