"""Query policies: which images the teacher sees, checked against the paper's rule and each other."""
import dataclasses

import numpy as np
import pytest
import torch

from common.models import build_model
from student_trainer.query.mixing import select_and_mix
from student_trainer.query import POLICIES, build_policy
from student_trainer.query.uncertainty import entropy


def policy_config(query: str, **over):
    """``query``'s own config with these values (the fields it has of them)."""
    values = dict(batch_size=16, k=12, b=8.0, w=10.0, selection="entropy", uncertainty_bn="batch",
                  refresh_every=2, seed=3, views=1) | over
    kind = POLICIES[query].config_type
    return kind(**{f.name: values[f.name] for f in dataclasses.fields(kind) if f.name in values})


def make_policy(query: str, dataset_size: int = 0, context=None, **over):
    return build_policy(query, policy_config(query, **over), dataset_size, context)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 16, 16, generator=g)
    labels = torch.randint(0, 10, (16,), generator=g)
    indices = torch.arange(100, 116)
    student = build_model("resnet8", num_classes=10, in_channels=3)
    return student, images, labels, indices


def test_all_sends_every_image_unmixed(batch):
    student, images, labels, indices = batch
    q = make_policy("all").select(student, images, labels, indices)
    assert torch.equal(q.images, images) and torch.equal(q.labels_a, labels) and torch.equal(q.labels_b, labels)
    assert torch.equal(q.indices, indices) and q.mix.abs().sum() == 0 and q.choosing_forward == 0


def test_random_sends_k_distinct_unmixed_images_without_a_student_pass(batch):
    student, images, labels, indices = batch
    q = make_policy("random").select(student, images, labels, indices)
    assert q.images.shape[0] == 12 and q.choosing_forward == 0 and q.mix.abs().sum() == 0
    assert len(set(q.indices.tolist())) == 12
    for img, lab, idx in zip(q.images, q.labels_a, q.indices.tolist()):
        assert torch.equal(img, images[idx - 100]) and lab == labels[idx - 100]


def test_unix_is_the_papers_selection_and_mixing_with_the_same_draws(batch):
    """The policy's result equals select_and_mix fed the student's entropy and the same seeded draws."""
    student, images, labels, indices = batch
    q = make_policy("unix").select(student, images, labels, indices)
    with torch.no_grad():
        scores = entropy(torch.softmax(student(images), dim=1))
    rng, gen = np.random.default_rng(3), torch.Generator().manual_seed(3)
    lam = float(rng.beta(1.0, 1.0))
    perm = torch.randperm(16, generator=gen)
    want = select_and_mix(images, labels, scores, k=12, b=8.0, w=10.0, lam=lam, perm=perm)
    assert torch.allclose(q.images, want.images) and torch.equal(q.labels_b, want.labels_b)
    assert torch.equal(q.indices, indices[want.selected]) and q.choosing_forward == 16
    assert q.parts["lambda"] == lam


def test_unix_nomix_selects_as_unix_does_and_mixes_nothing(batch):
    student, images, labels, indices = batch
    mixed = make_policy("unix").select(student, images, labels, indices)
    plain = make_policy("unix-nomix").select(student, images, labels, indices)
    assert torch.equal(plain.indices, mixed.indices)
    assert plain.mix.abs().sum() == 0 and torch.equal(plain.images, images[plain.indices - 100])


def test_the_uncertainty_pass_leaves_batchnorm_running_stats_alone_in_batch_mode(batch):
    student, images, labels, indices = batch
    before = {k: v.clone() for k, v in student.state_dict().items()}
    make_policy("unix").select(student, images, labels, indices)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    make_policy("unix", uncertainty_bn="train").select(student, images, labels, indices)
    assert not all(torch.equal(before[k], v) for k, v in student.state_dict().items())


@pytest.mark.parametrize("query", sorted(POLICIES))
def test_policy_state_round_trips_so_a_resumed_run_draws_the_same(batch, query, tmp_path):
    from common.answer_store import open_store
    from common.views import StoredImages, Views
    from student_trainer.query import PolicyContext

    student, _, labels, indices = batch
    stored = StoredImages(torch.randint(0, 256, (200, 3, 16, 16), dtype=torch.uint8), torch.zeros(200).long(), 2,
                          True, (0.5,) * 3, (0.25,) * 3)
    recipes = stored.draw(3, 1, indices)
    images, views = stored.render(recipes), Views(recipes)   # every policy is given the batch's recipes
    with open_store(str(tmp_path / "store")) as store:
        context = PolicyContext(stored, store, "t", ("logits",))  # read by the policies that keep answers
        a = make_policy(query, 200, context)
        q = a.select(student, images, labels, indices, views=views)
        a.complete(q, {"logits": torch.randn(q.teacher_rows, 10)})
        state = a.state_dict()
        b = make_policy(query, 200, context, seed=99)
        b.load_state_dict(state)
        qa = a.select(student, images, labels, indices, views=views)
        qb = b.select(student, images, labels, indices, views=views)
    assert torch.equal(qa.images, qb.images) and torch.equal(qa.indices, qb.indices)
    assert qa.teacher_rows == qb.teacher_rows


@pytest.mark.parametrize("query", ["unix", "random", "unix-nomix"])
def test_a_k_outside_the_batch_is_one_line(query):
    with pytest.raises(ValueError, match="--k must be between 1 and --batch-size 16"):
        policy_config(query, k=17)
