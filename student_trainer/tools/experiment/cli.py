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
import logging
import os
import shlex
import sys

from common.cli_errors import one_line_errors
from student_trainer.tools.experiment.config import load_config
from student_trainer.tools.experiment.markdown import results_markdown
from student_trainer.tools.experiment.pipeline import run_experiment


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
