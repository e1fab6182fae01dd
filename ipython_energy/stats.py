"""Statistics of repeated measurements: a group's mean and its interval, and the ratio of two groups.

The intervals are Student-t intervals, chosen over the bootstrap because repeats are few
(3 to 20): a bootstrap interval from 5 values is too narrow (it cannot see spread the sample
did not happen to show), while the t interval is exact for normal errors and close for the
mildly skewed run-to-run variation of energy (heat, clocks, background load).

- The mean of one group: ``mean ± t(0.975, n-1) · sd / √n``.
- The ratio of two groups' means (b over a): on the log scale, where a ratio is a difference,
  ``log(b̄/ā) ± t(0.975, ν) · se`` with ``se² = s_b²/(n_b b̄²) + s_a²/(n_a ā²)`` (the delta
  method) and ν the Welch–Satterthwaite degrees of freedom, then back to a ratio.  The groups
  may differ in size and in spread.

Both need at least two values a side; with fewer there is no interval (``None``), never a
made-up one.  tests/test_stats.py checks the coverage over many seeded trials.
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Sequence

LEVEL = 0.95


class Summary(NamedTuple):
    """One group of repeated values."""

    n: int
    mean: float
    sd: float | None  # sample standard deviation (n - 1); None for one value
    cv: float | None  # sd / mean
    ci95: tuple[float, float] | None  # of the mean; None for one value


class Ratio(NamedTuple):
    """``b / a`` of two groups' means, with its interval (None with fewer than two values a side)."""

    ratio: float
    ci95: tuple[float, float] | None
    df: float | None


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def _clean(values: Iterable[float]) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError("no values")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"values must be finite numbers, not {out!r}"[:120])
    return out


def summarize(values: Iterable[float], level: float = LEVEL) -> Summary:
    xs = _clean(values)
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        return Summary(n, mean, None, None, None)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1, level) * sd / math.sqrt(n)
    return Summary(n, mean, sd, sd / mean if mean else None, (mean - half, mean + half))


def ratio(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Ratio:
    """``mean(b) / mean(a)`` with its interval on the log scale (see the module's docstring)."""
    sa, sb = summarize(a, level), summarize(b, level)
    if sa.mean <= 0 or sb.mean <= 0:
        raise ValueError("a ratio of energies needs positive means")
    r = sb.mean / sa.mean
    if sa.sd is None or sb.sd is None:
        return Ratio(r, None, None)
    va = sa.sd ** 2 / (sa.n * sa.mean ** 2)
    vb = sb.sd ** 2 / (sb.n * sb.mean ** 2)
    se = math.sqrt(va + vb)
    if se == 0:
        return Ratio(r, (r, r), math.inf)
    df = (va + vb) ** 2 / (va ** 2 / (sa.n - 1) + vb ** 2 / (sb.n - 1))
    half = t_quantile(df, level) * se
    return Ratio(r, (r * math.exp(-half), r * math.exp(half)), df)
