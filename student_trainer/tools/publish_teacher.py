"""python -m student_trainer.tools.publish_teacher RUN_DIR OUT.pt: a trained run's best weights, ready to ship.

A teacher committed to the repository (the demo's, the experiments') must be
small and must say where it came from: this keeps the weights and the model's
facts, drops the training state (optimiser, RNG, counters), and records the
command, the commit and the top-1 in the checkpoint's ``meta`` and in
``OUT.json`` beside it, so anyone can check or regenerate it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from common.checkpoint import REQUIRED, load_checkpoint, save_checkpoint
from common.cli_errors import one_line_errors


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        return out.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def publish(run_dir: str | Path, out: str | Path, *, command: str, name: str | None = None) -> dict:
    """Write ``out`` (weights + facts) and ``out.json``; return the facts."""
    run_dir, out = Path(run_dir), Path(out)
    ckpt = load_checkpoint(run_dir / "best.pt" if run_dir.is_dir() else run_dir)
    meta = ckpt.get("meta", {})
    facts = {
        "name": name or out.stem,
        "arch": ckpt["arch"],
        "dataset": meta.get("dataset"),
        "num_classes": ckpt["num_classes"],
        "input_shape": list(ckpt["input_shape"]),
        "top1": meta.get("top1"),
        "epochs": meta.get("epoch"),
        "steps": meta.get("steps"),
        "seed": meta.get("seed"),
        "command": command,
        "commit": _commit(),
        "published": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    shipped = {key: ckpt[key] for key in ("format", *REQUIRED) if key in ckpt} | {"meta": facts}
    save_checkpoint(shipped, out)
    out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m student_trainer.tools.publish_teacher", description=__doc__)
    p.add_argument("run_dir", help="a trainer run folder (its best.pt) or a checkpoint file")
    p.add_argument("out", help="where to write the shipped checkpoint (.pt); OUT.json goes beside it")
    p.add_argument("--command", required=True, help="the command that trained it, recorded in the metadata")
    p.add_argument("--name", default=None, help="the teacher's name as the server reports it (default: OUT's stem)")
    args = p.parse_args(argv)
    with one_line_errors("publish_teacher"):
        facts = publish(args.run_dir, args.out, command=args.command, name=args.name)
        print(f"{args.out}: {facts['arch']} on {facts['dataset']}, top-1 {facts['top1']}, commit {facts['commit']}")


if __name__ == "__main__":
    main()
