"""Paired per-seed differences: the interval a reviewer checks, computed by hand here."""
import math

import pytest

from student_trainer.tools.paired import paired_difference, t975


def test_the_interval_is_the_t_interval_of_the_per_seed_differences():
    d = paired_difference([81.0, 82.5, 80.0], [80.0, 81.0, 80.5])  # differences 1.0, 1.5, -0.5
    assert d.diffs == pytest.approx((1.0, 1.5, -0.5)) and d.mean == pytest.approx(2 / 3)
    sd = math.sqrt(((1 - 2 / 3) ** 2 + (1.5 - 2 / 3) ** 2 + (-0.5 - 2 / 3) ** 2) / 2)
    half = 4.303 * sd / math.sqrt(3)
    assert (d.low, d.high) == pytest.approx((2 / 3 - half, 2 / 3 + half))
    assert d.verdict == "no detectable difference" and str(d) == f"+0.67 [{2 / 3 - half:+.2f}, {2 / 3 + half:+.2f}]"


def test_a_consistent_gap_is_detected_either_way():
    assert paired_difference([82.0, 83.1, 81.9], [80.0, 81.0, 80.1]).verdict == "higher"
    assert paired_difference([80.0, 81.0, 80.1], [82.0, 83.1, 81.9]).verdict == "lower"


def test_quantiles_and_bad_input():
    assert t975(2) == 4.303 and t975(30) == 2.042 and t975(100) == 1.96
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1.0, 2.0], [1.0])
    one = paired_difference([1.0], [0.0])
    assert one.mean == 1.0 and one.verdict == "no detectable difference"  # one pair: no interval
