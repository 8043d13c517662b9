"""The report and the experiment runner, on tiny real runs."""
import json
import shutil
import struct
from pathlib import Path

import pytest

from student_trainer.cli import main as train
from student_trainer.tools.experiment.cli import main as experiment
from student_trainer.tools.experiment.config import load_config, to_flags
from student_trainer.tools.report import main as report
from tests.conftest import train_args

ROOT = Path(__file__).resolve().parents[1]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_writes_the_table_and_two_plots(grpc_teacher, tmp_path, capsys):
    url, _ = grpc_teacher
    for method in ("kd", "unix"):
        train(train_args(tmp_path / method, "--method", method, "--teacher-url", url, "--batch-size", "16",
                         "--k", "8", "--train-size", "64", "--epochs", "2"))
    report([str(tmp_path / "kd"), str(tmp_path / "unix"), "--out", str(tmp_path / "report")])
    md = (tmp_path / "report" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| kd ") or line.startswith("| unix ")]
    assert len(rows) == 2
    assert "| 128 |" in rows[0] and "| 64 |" in rows[1]   # teacher images: all of them vs k/N
    for name in ("top1_vs_teacher_images.png", "top1_vs_compute.png"):
        w, h = _png_size(tmp_path / "report" / name)
        assert w >= 400 and h >= 300
    assert "wrote" in capsys.readouterr().out


def test_run_names_tell_runs_apart():
    from student_trainer.tools.report import run_names

    assert run_names(["runs/kd/seed0", "runs/unix/seed0"]) == ["kd/seed0", "unix/seed0"]
    assert run_names(["a/kd", "a/unix"]) == ["kd", "unix"]


def test_report_on_a_folder_without_a_run_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        report([str(tmp_path)])
    assert e.value.code == 2
    assert "holds no summary.json" in capsys.readouterr().err


def test_config_to_flags():
    assert to_flags({"batch_size": 64, "milestones": [5, 8], "no_augment": True, "download": False,
                     "T": 4}) == ["--batch-size", "64", "--milestones", "5,8", "--no-augment", "--T", "4"]


def test_shipped_configs_parse_and_quick_overrides_apply():
    for path in sorted((ROOT / "experiments").glob("*.toml")):
        config = load_config(str(path))
        assert config["groups"]
        quick = load_config(str(path), quick=True)
        assert quick["out"] != config["out"]
        if "out" in config["teacher"]:
            assert quick["teacher"]["out"] != config["teacher"]["out"]
    quick = load_config(str(ROOT / "experiments" / "fashion_mnist.toml"), quick=True)
    assert all(len(g["seeds"]) == 1 for g in quick["groups"])
    assert quick["student"]["train_size"] == 640 and quick["student"]["arch"] == "resnet8"


def test_smoke_experiment_end_to_end(tmp_path, monkeypatch):
    config = (ROOT / "experiments" / "smoke.toml").read_text().replace('out = "runs/smoke"',
                                                                       f'out = "{tmp_path}"')
    config = config.replace('[teacher]', f'[teacher]\nout = "{tmp_path}/teacher"', 1)
    (tmp_path / "smoke.toml").write_text(config)
    with pytest.raises(SystemExit):  # nothing recorded yet: nothing to report, said in one line
        experiment([str(tmp_path / "smoke.toml"), "--records-only"])
    experiment([str(tmp_path / "smoke.toml")])
    results = json.loads((tmp_path / "results.json").read_text())
    groups = {g["group"]: g for g in results["groups"]}
    assert groups["kd"]["teacher_images"] == 128 and groups["unix"]["teacher_images"] == 48
    assert len(groups["kd"]["top1"]) == 2 and groups["kd"]["seeds"] == [0, 1]
    assert groups["kd"]["compute_vs_kd"] == pytest.approx(1.0) and groups["unix"]["compute_vs_kd"] < 1.0
    # KD with UNIX's measured compute: fewer steps (the same schedule shape), about the same FLOPs
    matched = groups["kd-equal-compute"]
    assert matched["options"]["match_compute"] == "unix"
    assert matched["steps"] == round(4 * groups["unix"]["compute_vs_kd"]) < groups["kd"]["steps"] == 4
    assert matched["compute"] == pytest.approx(matched["steps"] / 4)
    pairs = {(p["a"], p["b"]): p for p in results["pairs"]}
    unix_kd = pairs[("unix", "kd")]
    assert unix_kd["last"]["diffs"] == pytest.approx([u - k for u, k in zip(groups["unix"]["top1"],
                                                                             groups["kd"]["top1"])])
    md = (tmp_path / "results.md").read_text()
    assert "**Verdict: unix was" in md and "kd-equal-compute" in md
    assert (tmp_path / "figures" / "top1_vs_compute.png").stat().st_size > 0
    # every run has a record with its exact flags; a second pass reuses all of them, a changed flag does not
    record = json.loads((tmp_path / "runs" / "unix" / "seed1" / "run.json").read_text())
    assert record["flags"][-2:] == ["--seed", "1"] and len(record["teacher"]["sha256"]) == 64
    assert (tmp_path / "runs" / "unix" / "seed1" / "metrics.jsonl").stat().st_size > 0
    stamp = (tmp_path / "runs" / "kd" / "seed0" / "summary.json").stat().st_mtime_ns
    experiment([str(tmp_path / "smoke.toml")])
    assert (tmp_path / "runs" / "kd" / "seed0" / "summary.json").stat().st_mtime_ns == stamp
    (tmp_path / "smoke.toml").write_text(config.replace("k = 12", "k = 8"))
    experiment([str(tmp_path / "smoke.toml"), "--jobs", "2"])  # kd-equal-compute waits for the new unix runs
    assert (tmp_path / "runs" / "kd" / "seed0" / "summary.json").stat().st_mtime_ns == stamp
    again = {g["group"]: g for g in json.loads((tmp_path / "results.json").read_text())["groups"]}
    assert again["unix"]["teacher_images"] == 32
    # --records-only trains nothing: a group whose flags changed is listed as not run, with what depends on it
    (tmp_path / "smoke.toml").write_text(config.replace("k = 12", "k = 4"))
    experiment([str(tmp_path / "smoke.toml"), "--records-only"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert [g["group"] for g in results["groups"]] == ["kd"]
    assert results["not_run"] == ["unix", "kd-equal-compute"] and results["pairs"] == []
    assert "Not run yet" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("config_name, out, results", [("fashion_mnist", "runs/fashion-mnist", "docs"),
                                                       ("answer_store", "runs/answer-store", "docs/answer-store"),
                                                       ("history/fashion_mnist_3_seeds", "runs/fashion-mnist-3-seeds",
                                                        "docs/history/3-seeds")])
def test_the_committed_evidence_is_rebuilt_from_its_committed_records(tmp_path, config_name, out, results):
    """The results.json in docs must follow from the run records in git alone (no training): nothing hidden,
    nothing edited."""
    if not (ROOT / results / "results.json").is_file():
        pytest.skip(f"{results}/results.json is not committed yet")
    committed = json.loads((ROOT / results / "results.json").read_text())
    config = (ROOT / "experiments" / f"{config_name}.toml").read_text()
    assert f'out = "{out}"' in config and f'results = "{results}"' in config  # never write over docs/
    if "answer_store =" not in config:  # (a store's path is in its runs' flags: records-only writes nothing there)
        config = config.replace(f'out = "{out}"', f'out = "{tmp_path}/out"')
    config = config.replace(f'results = "{results}"', f'results = "{tmp_path}/docs"')
    (tmp_path / "evidence.toml").write_text(config)
    shutil.copytree(ROOT / results / "runs", tmp_path / "docs" / "runs")
    experiment([str(tmp_path / "evidence.toml"), "--records-only"])
    rebuilt = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert rebuilt["not_run"] == committed["not_run"]
    for key in ("groups", "pairs", "verdict", "convergence"):
        assert rebuilt[key] == committed[key], key
    for group in committed["groups"]:
        for seed in group["seeds"]:
            record = ROOT / results / "runs" / group["group"] / f"seed{seed}"
            assert all((record / name).is_file() for name in ("summary.json", "metrics.jsonl", "run.json"))
