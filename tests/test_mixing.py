"""select_and_mix against the paper's formula, and the uncertainty measures."""
import math

import pytest
import torch

from student_trainer.query.mixing import mixing_mask, scaled_for_batch, select_and_mix
from student_trainer.query.uncertainty import UNCERTAINTY, uncertainty


def _sigmoid(z):
    return 1 / (1 + math.exp(-z))


@pytest.mark.parametrize("n,b,w,lam", [(64, 32, 10, 0.7), (64, 16, 1000, 1.0), (8, 2, 5, 0.25), (1, 1, 10, 0.5)])
def test_mask_matches_formula(n, b, w, lam):
    mask = mixing_mask(n, b, w, lam)
    expected = [lam * _sigmoid(w * (r / n - (2 * b - 1) / (2 * n))) for r in range(n)]
    assert mask.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_mask_midpoint_is_between_ranks_b_minus_1_and_b():
    mask = mixing_mask(64, 32, 10, 1.0)
    assert mask[31] < 0.5 < mask[32]
    assert mask[31] + mask[32] == pytest.approx(1.0, abs=1e-6)  # symmetric about the midpoint
    assert torch.all(mask[1:] > mask[:-1])                      # more certain -> mixed more


def _batch(n=16, c=3, hw=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, hw, hw, generator=g), torch.arange(n) % 5, torch.rand(n, generator=g)


def test_selects_top_k_by_score_and_mixes_by_rank():
    x, y, scores = _batch()
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    mb = select_and_mix(x, y, scores, k=12, b=8, w=10, lam=0.6, perm=perm)
    order = torch.argsort(scores, descending=True)
    assert mb.selected.tolist() == order[:12].tolist()
    assert sorted(mb.dropped.tolist()) == sorted(order[12:].tolist())
    assert scores[mb.selected].min() >= scores[mb.dropped].max()
    m = mixing_mask(16, 8, 10, 0.6)[:12]
    for r in range(12):
        want = (1 - m[r]) * x[order[r]] + m[r] * x[perm[r]]
        assert torch.allclose(mb.images[r], want, atol=1e-6)
    assert mb.labels_a.tolist() == y[order[:12]].tolist()
    assert mb.labels_b.tolist() == y[perm[:12]].tolist()
    assert torch.allclose(mb.mix, m)


def test_kd_special_case_is_the_unmixed_batch():
    x, y, scores = _batch()
    perm = torch.randperm(16)
    mb = select_and_mix(x, y, scores, k=16, b=8, w=10, lam=0.0, perm=perm)
    assert torch.equal(mb.images, x[mb.selected])
    assert sorted(mb.selected.tolist()) == list(range(16))
    assert len(mb.dropped) == 0


def test_huge_w_leaves_ranks_below_b_unmixed():
    x, y, scores = _batch()
    mb = select_and_mix(x, y, scores, k=8, b=8, w=1e6, lam=1.0, perm=torch.randperm(16))
    assert torch.allclose(mb.images, x[mb.selected])


def test_batch_of_one_is_defined():
    x, y, scores = _batch(n=1)
    mb = select_and_mix(x, y, scores, k=1, b=1, w=10, lam=0.9, perm=torch.zeros(1, dtype=torch.long))
    assert torch.allclose(mb.images, x)  # the only partner is itself


@pytest.mark.parametrize("k", [0, 17])
def test_k_outside_batch_is_a_clear_error(k):
    x, y, scores = _batch()
    with pytest.raises(ValueError, match="k must be between 1 and the batch size 16"):
        select_and_mix(x, y, scores, k=k, b=8, w=10, lam=0.5, perm=torch.randperm(16))


def test_wrong_perm_is_a_clear_error():
    x, y, scores = _batch()
    with pytest.raises(ValueError, match="perm"):
        select_and_mix(x, y, scores, k=4, b=8, w=10, lam=0.5, perm=torch.randperm(15))


def test_last_partial_batch_keeps_the_ratios():
    assert scaled_for_batch(64, 64, 48, 32) == (48, 32)
    assert scaled_for_batch(16, 64, 48, 32) == (12, 8.0)
    assert scaled_for_batch(1, 64, 48, 32) == (1, 0.5)
    assert scaled_for_batch(10, 64, 48, 32) == (8, 5.0)   # ceil(7.5)


def test_uncertainty_measures_order_a_sure_and_an_unsure_image():
    probs = torch.tensor([[0.98, 0.01, 0.01], [0.4, 0.35, 0.25], [0.6, 0.39, 0.01]])
    ent = uncertainty("entropy", probs)
    assert ent.argmax() == 1 and ent.argmin() == 0
    conf = uncertainty("confidence", probs)
    assert conf.tolist() == pytest.approx([0.02, 0.6, 0.4])
    marg = uncertainty("margin", probs)
    assert marg.tolist() == pytest.approx([-0.97, -0.05, -0.21])
    r1 = uncertainty("random", probs, torch.Generator().manual_seed(3))
    r2 = uncertainty("random", probs, torch.Generator().manual_seed(3))
    assert torch.equal(r1, r2) and r1.shape == (3,)
    assert set(UNCERTAINTY) == {"entropy", "confidence", "margin", "random"}


def test_unknown_selection_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of"):
        uncertainty("variance", torch.ones(2, 2) / 2)
