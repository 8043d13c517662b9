"""UNIX-KD's step for a loop of one's own: unix_select against the trainer's unix policy, UnixDistillationTask
against a real server (the images it counts), and docs/library.md's examples, run and compared with the page."""
import copy
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.models import build_model
from student_trainer import UnixBatch, UnixDistillationTask, kd_loss, mixed_ce, unix_select
from student_trainer.query import POLICIES, build_policy
from tests.conftest import train_task

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("docs/examples/plain_loop.py", "docs/examples/timm_task.py")


def policy(query: str, **over):
    values = dict(batch_size=16, k=12, b=8.0, w=10.0, selection="entropy", uncertainty_bn="batch", seed=3) | over
    kind = POLICIES[query].config_type
    return build_policy(query, kind(**{k: v for k, v in values.items() if k in kind.__dataclass_fields__}))


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 16, 16, generator=g)
    labels = torch.randint(0, 10, (16,), generator=g)
    torch.manual_seed(0)
    return build_model("resnet8", num_classes=10, in_channels=3), images, labels


@pytest.mark.parametrize("query, selection, bn, n", [
    ("unix", "entropy", "batch", 16), ("unix", "random", "train", 16), ("unix", "margin", "eval", 16),
    ("unix", "entropy", "batch", 10), ("unix-nomix", "confidence", "batch", 16)])
def test_unix_select_selects_and_mixes_as_the_unix_policy_does(batch, query, selection, bn, n):
    """Same student, images, seed and lam: the same rows, partners, weights and bit-identical mixed images
    (n = 10 of a batch of 16: the last batch of an epoch, k and b scaled alike)."""
    student, images, labels = batch
    images, labels, indices = images[:n], labels[:n], torch.arange(100, 100 + n)
    want = policy(query, selection=selection, uncertainty_bn=bn).select(copy.deepcopy(student), images, labels,
                                                                        indices)
    lam = float(np.random.default_rng(3).beta(1.0, 1.0))  # the policy's draw; the function takes it as given
    got = unix_select(copy.deepcopy(student), images, labels, 12, b=8.0, w=10.0, selection=selection,
                      uncertainty_bn=bn, lam=lam, mix=query == "unix", batch_size=16,
                      generator=torch.Generator().manual_seed(3))
    assert isinstance(got, UnixBatch) and len(got) == want.images.shape[0] == (12 if n == 16 else 8)
    assert torch.equal(got.images, want.images) and torch.equal(got.mix, want.mix)
    assert torch.equal(indices[got.indices], want.indices)
    assert torch.equal(got.labels_a, want.labels_a) and torch.equal(got.labels_b, want.labels_b)
    assert got.lam == (lam if query == "unix" else 0.0) and got.scores.shape == (n,)
    if query == "unix":
        assert want.parts["lambda"] == lam and got.mix.max() > 0
        assert torch.allclose(got.images, (1 - got.mix.view(-1, 1, 1, 1)) * images[got.indices]
                              + got.mix.view(-1, 1, 1, 1) * images[got.partners])


def test_unix_select_draws_lam_from_its_generator_and_leaves_the_student_as_it_was(batch):
    student, images, labels = batch
    student = copy.deepcopy(student).eval()
    a = unix_select(student, images, labels, 4, generator=torch.Generator().manual_seed(1))
    b = unix_select(student, images, labels, 4, generator=torch.Generator().manual_seed(1))
    assert not student.training and 0 < a.lam < 1 and a.lam == b.lam and torch.equal(a.images, b.images)
    assert (a.scores[a.indices].min() >= a.scores.sort(descending=True).values[3])  # the 4 most uncertain
    logits = torch.randn(4, 10)
    soft = torch.sum(-a.soft_targets(10) * logits.log_softmax(1), dim=1).mean()
    assert torch.allclose(a.task_loss(logits), soft) and torch.allclose(soft, mixed_ce(logits, a.labels_a,
                                                                                         a.labels_b, a.mix))


@pytest.mark.parametrize("bad, message", [
    (dict(k=0), "k must be between 1 and the batch size 16"), (dict(k=17), "got 17"),
    (dict(selection="nope"), "unknown selection 'nope'"), (dict(uncertainty_bn="x"), "unknown uncertainty_bn"),
    (dict(w=-1.0), "w must be >= 0"), (dict(batch_size=8), "larger than batch_size 8")])
def test_unix_select_refuses_bad_knobs_in_one_line(batch, bad, message):
    student, images, labels = batch
    with pytest.raises(ValueError, match=message):
        unix_select(student, images, labels, **({"k": 4} | bad))


def test_unix_distillation_task_asks_the_served_teacher_about_k_images_a_step(grpc_teacher):
    timm = pytest.importorskip("timm")
    from student_trainer import TeacherModule

    url, servicer = grpc_teacher
    torch.manual_seed(0)
    student = timm.create_model("test_resnet", num_classes=10)
    n, k, T = 8, 3, 4.0
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(2))
    with TeacherModule(url) as teacher:
        task = UnixDistillationTask(student, teacher_model=teacher, temperature=T, verbose=False, k=k, b=4, seed=5)
        assert {id(p) for p in task.parameters()} == {id(p) for p in student.parameters()}
        before = servicer.counters.snapshot()["images"]
        results = train_task(task, x, y)
        served = servicer.counters.snapshot()["images"] - before
        assert served == 3 * k == sum(r["teacher_images"] for r in results) == teacher.counters.images
        assert all(r["teacher_images"] == k and r["output"].shape == (k, 10) for r in results)
        assert all(math.isfinite(r["loss"].item()) for r in results) and not teacher.training
        last, out = task.last_batch, results[-1]["output"].detach()
        assert torch.allclose(results[-1]["task_loss"], mixed_ce(out, last.labels_a, last.labels_b, last.mix))
        # test_resnet's mean/std are 0.5, the teacher's ImageNet's: timm renormalises what the teacher is sent
        sent = task.teacher.normalize_input(last.images, task.student_mean, task.student_std)
        assert not torch.equal(sent, last.images)
        assert torch.allclose(results[-1]["kd_loss"], kd_loss(out, teacher(sent), T), atol=1e-5)
        assert torch.allclose(results[-1]["loss"], results[-1]["task_loss"] + results[-1]["kd_loss"])
    state = task.get_task_state()["unix_generator"]
    task.generator.manual_seed(0)
    task.load_task_state({"unix_generator": state})
    assert torch.equal(task.generator.get_state(), state)


def test_unix_distillation_task_takes_timms_arguments_and_refuses_bad_knobs():
    from timm.task import LogitDistillationTask
    import inspect

    ours, theirs = (inspect.signature(c.__init__).parameters for c in (UnixDistillationTask, LogitDistillationTask))
    assert list(ours)[:len(theirs)] == list(theirs)
    assert all(ours[name].default == theirs[name].default for name in theirs)
    with pytest.raises(ValueError, match="k must be between 1 and the batch size 8"):
        UnixDistillationTask(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), k=9, batch_size=8)


def blocks_after_markers(page: str) -> dict[str, str]:
    """{path: the fenced block after each ``<!-- example: PATH -->`` marker} of a markdown page."""
    pattern = re.compile(r"<!-- example: (\S+) -->\n```python\n(.*?)```\n", re.S)
    return {path: code for path, code in pattern.findall(page)}


def test_the_pages_examples_are_the_files():
    assert blocks_after_markers((ROOT / "docs/library.md").read_text()) == {
        path: (ROOT / path).read_text() for path in EXAMPLES}


@pytest.mark.parametrize("example, extra", [(EXAMPLES[0], []), (EXAMPLES[1], ["--student", "test_resnet"])])
def test_the_examples_run_against_a_served_teacher(grpc_teacher, example, extra):
    url, servicer = grpc_teacher
    before = servicer.counters.snapshot()["images"]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, example, "--teacher-url", url, "--steps", "2", "--batch-size", "8",
                           "--k", "3", *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 1: loss" in done.stdout and "the teacher saw 6 images in 2 steps" in done.stdout, done.stdout
    assert servicer.counters.snapshot()["images"] - before == 6


def test_a_student_of_another_class_count_is_one_line(grpc_teacher):
    timm = pytest.importorskip("timm")
    from student_trainer.library import TeacherModule, UnixDistillationTask

    url, _ = grpc_teacher
    with TeacherModule(url) as teacher:
        with pytest.raises(ValueError, match="student has 100 classes and the teacher 10"):
            UnixDistillationTask(timm.create_model("test_resnet", num_classes=100), teacher_model=teacher, k=4,
                                 verbose=False)

