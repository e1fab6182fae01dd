"""The intervals of ipython_energy.stats, checked by their coverage over many seeded trials.

Each trial draws repeats from a known distribution (the "truth"), so whether an interval
covers the true mean or ratio is known; over many trials the rate must be near 95 %.
"""

from __future__ import annotations

import math
import random

import pytest

from ipython_energy import stats

TRIALS = 2000


def _coverage(hit, trials=TRIALS) -> float:
    return sum(1 for i in range(trials) if hit(random.Random(i))) / trials


@pytest.mark.parametrize("n", [3, 8, 20])
def test_mean_interval_covers_the_true_mean_at_its_nominal_rate(n):
    def hit(rng):
        lo, hi = stats.summarize([rng.gauss(100.0, 6.0) for _ in range(n)]).ci95
        return lo <= 100.0 <= hi

    rate = _coverage(hit)
    print(f"FIGURE mean CI coverage n={n}: {rate:.3f}")
    assert 0.93 <= rate <= 0.97


@pytest.mark.parametrize("n_a, n_b, sd_b", [(8, 8, 6.0), (5, 12, 12.0)])
def test_ratio_interval_covers_the_true_ratio_at_its_nominal_rate(n_a, n_b, sd_b):
    """Unequal sizes and spreads too (Welch degrees of freedom)."""
    def hit(rng):
        a = [rng.gauss(100.0, 6.0) for _ in range(n_a)]
        b = [rng.gauss(90.0, sd_b) for _ in range(n_b)]
        lo, hi = stats.ratio(a, b).ci95
        return lo <= 0.9 <= hi

    rate = _coverage(hit)
    print(f"FIGURE ratio CI coverage n_a={n_a} n_b={n_b}: {rate:.3f}")
    assert 0.93 <= rate <= 0.975


def test_one_value_gives_no_interval_and_bad_values_are_refused():
    one = stats.summarize([42.0])
    assert one.n == 1 and one.mean == 42.0 and one.sd is None and one.ci95 is None
    assert stats.ratio([10.0], [9.0, 9.5]).ci95 is None
    assert stats.ratio([10.0, 11.0], [9.0, 9.5]).ratio == pytest.approx(9.25 / 10.5)
    for bad in ([], [1.0, math.nan], [1.0, math.inf]):
        with pytest.raises(ValueError):
            stats.summarize(bad)
    with pytest.raises(ValueError, match="positive"):
        stats.ratio([0.0, 0.0], [1.0, 2.0])


def test_summary_matches_the_textbook_figures():
    s = stats.summarize([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert s.mean == 5.0
    assert s.sd == pytest.approx(math.sqrt(32 / 7))
    assert s.cv == pytest.approx(s.sd / 5.0)
    half = 2.364624 * s.sd / math.sqrt(8)  # t(0.975, 7)
    assert s.ci95 == pytest.approx((5.0 - half, 5.0 + half), rel=1e-6)
