"""An experiment's figures: the frontier of its series, and tools.report's per-epoch plots of each group."""
from __future__ import annotations

from pathlib import Path

from student_trainer.tools.report import Run, write_report


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


def write_figures(example_runs: list[Run], groups: list[dict], folder: Path, name: str) -> None:
    """``folder``: the per-epoch report of each group's first seed, and the frontier plot."""
    write_report(example_runs, folder, title=f"{name}: seed 0 of each group")
    frontier_plot(groups, folder / "frontier.png", name)
