"""Run records of an experiment: a record written under a since-renamed trainer flag is still reused."""
import json
from pathlib import Path

import pytest

from student_trainer.tools.experiment.records import RENAMED_FLAGS, NotRecorded, current_flags
from student_trainer.tools.experiment.runner import store_flags
from student_trainer.tools.experiment.training import train_or_reuse

ROOT = Path(__file__).resolve().parents[1]
TEACHER = {"checkpoint": "teacher.pt", "sha256": "0" * 64}


def _record(folder: Path, flags: list[str], teacher: dict | None = TEACHER) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"top1": 12.5}))
    (folder / "run.json").write_text(json.dumps({"flags": flags, "teacher": teacher, "commit": "abc1234"}))
    return folder


def test_renamed_flags_are_read_under_their_new_names():
    assert RENAMED_FLAGS == {"--answer-store": "--replay-store"}
    saved = ["--query", "replay", "--answer-store", "runs/a/stores/replay-v1/seed0", "--seed", "0"]
    assert current_flags(saved) == ["--query", "replay", "--replay-store", "runs/a/stores/replay-v1/seed0",
                                    "--seed", "0"]
    assert current_flags(["--method", "kd", "--seed", "1"]) == ["--method", "kd", "--seed", "1"]
    assert current_flags(None) is None  # a run.json without flags matches nothing


def test_a_record_under_the_old_flag_name_is_reused_and_nothing_trains(tmp_path):
    old = ["--query", "replay", "--answer-store", "stores/seed0", "--seed", "0"]
    record = _record(tmp_path / "runs" / "replay" / "seed0", old)
    new = ["--query", "replay", "--replay-store", "stores/seed0", "--seed", "0"]
    # train=False: were the record not reused, this would raise NotRecorded instead of training
    assert train_or_reuse(new, tmp_path / "scratch", record, TEACHER, train=False) == {"top1": 12.5}
    assert json.loads((record / "run.json").read_text())["flags"] == old  # the committed record is not rewritten
    for other in (["--query", "replay", "--replay-store", "stores/seed1", "--seed", "0"], old):
        with pytest.raises(NotRecorded):  # another store, or the old name itself, is another run
            train_or_reuse(other, tmp_path / "scratch", record, TEACHER, train=False)


def test_the_runner_passes_replay_store_and_empties_only_a_run_s_own_or_a_sweep_s_first(tmp_path):
    own = {"name": "replay-v1", "answer_store": "own", "seeds": [3, 4]}
    assert store_flags(own, 4, tmp_path) == (["--replay-store", str(tmp_path / "stores/replay-v1/seed4")],
                                             tmp_path / "stores/replay-v1/seed4")
    shared = {"name": "sweep", "answer_store": "shared", "seeds": [3, 4]}
    assert store_flags(shared, 3, tmp_path) == (["--replay-store", str(tmp_path / "stores/sweep/shared")],
                                                tmp_path / "stores/sweep/shared")
    assert store_flags(shared, 4, tmp_path)[1] is None
    assert store_flags({"name": "kd"}, 0, tmp_path) == ([], None)
    with pytest.raises(ValueError, match="'own' or 'shared'"):
        store_flags({"name": "x", "answer_store": "mine"}, 0, tmp_path)


def test_every_committed_replay_record_reads_as_replay_store():
    """What the rename is for: the evidence under docs/answer-store/runs/ was written with --answer-store."""
    records = sorted((ROOT / "docs" / "answer-store" / "runs").glob("*/seed*/run.json"))
    if not records:
        pytest.skip("docs/answer-store/runs/ is not committed")
    saved = [json.loads(path.read_text())["flags"] for path in records]
    with_store = [flags for flags in saved if "--answer-store" in flags or "--replay-store" in flags]
    assert with_store and all("--replay-store" in current_flags(flags) for flags in with_store)
    assert not any("--answer-store" in current_flags(flags) for flags in saved)


def test_a_record_from_another_experiment_in_the_same_regime_is_reused_but_not_another_group_s_store(tmp_path):
    """A store is scratch under the experiment's ``out``: only its group and seed folder tell runs apart."""
    made = ["--query", "replay", "--replay-store", "runs/answer-store/stores/replay-v1/seed0", "--seed", "0"]
    record = _record(tmp_path / "runs" / "replay-v1" / "seed0", made)
    here = ["--query", "replay", "--replay-store", "runs/fashion-mnist/stores/replay-v1/seed0", "--seed", "0"]
    assert train_or_reuse(here, tmp_path / "scratch", record, TEACHER, train=False) == {"top1": 12.5}
    for other in ("runs/fashion-mnist/stores/replay-v1/shared", "runs/fashion-mnist/stores/replay-v2/seed0"):
        with pytest.raises(NotRecorded):  # a sweep's shared store, or another group's, is another run
            train_or_reuse([*here[:3], other, *here[4:]], tmp_path / "scratch", record, TEACHER, train=False)
