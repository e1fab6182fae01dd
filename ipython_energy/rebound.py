"""Rebound with uncertainty: is a fall in J/run and a rise in total bigger than run-to-run noise?

:func:`ipython_energy.rollup.find_rebounds` flags a sweep whose mean J/run fell against an
earlier sweep's while its total rose.  Where both sweeps have repeats (some group with at least
two measured runs), the two changes carry 95 % intervals from this module and the flag fires
only when both lie outside "no change" (docs/comparing.md, "Rebound with uncertainty"):

- **J/run**: the ratio of the two sweeps' mean energies per measured run (warm-ups out), with
  the log-ratio Welch interval of :func:`ipython_energy.stats.ratio`.  Each measured run is one
  value.
- **Total**: the later total minus the earlier, ``± t(0.975, ν) · √(var_a + var_b)``, divided by
  the earlier total.  A sweep's total is a sum of run energies; its run-to-run variance is
  estimated from its groups of repeats: every run of a group with two or more measured runs
  adds that group's variance ``s_g²``, every other run (ungrouped, or alone in its group) adds the
  pooled within-group variance; warm-ups are runs of the sweep and count like the others.  ν is
  the Welch–Satterthwaite degrees of freedom of that sum of variance estimates.  The energy
  between runs is taken as known (it is not repeated, so there is nothing to estimate its
  noise from).

Everything is pure: rows as :func:`ipython_energy.layout.run_row` makes them in, numbers out.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, NamedTuple

from . import stats

#: What a rebound record says when either sweep has no repeats.
NO_INTERVAL = "no repeats: no interval"


class Spread(NamedTuple):
    """What a sweep's runs say about its noise (see the module's docstring)."""

    measured_j: tuple[float, ...]  # ended, measured (non-warm-up) runs' energies: the J/run values
    total_var_j2: float | None  # run-to-run variance of the sweep's total; None without repeats
    total_df: float | None  # its Welch–Satterthwaite degrees of freedom
    repeated_groups: int  # groups with at least two measured runs

    @property
    def has_repeats(self) -> bool:
        return self.repeated_groups > 0


def _variance(xs: list[float]) -> float:
    mean = math.fsum(xs) / len(xs)
    return math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)


def _energy(row: Mapping[str, Any]) -> float | None:
    value = row.get("energy_j")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def sweep_spread(rows: Iterable[Mapping[str, Any]]) -> Spread:
    """The noise of one sweep from its runs' rows (group parents and running runs skipped)."""
    ended = [r for r in rows if r.get("kind") != "group" and r.get("status") != "running" and _energy(r) is not None]
    measured = [r for r in ended if not r.get("warmup")]
    by_group: dict[str, list[float]] = {}
    for r in measured:
        if r.get("group"):
            by_group.setdefault(r["group"], []).append(_energy(r))
    repeated = {g: xs for g, xs in by_group.items() if len(xs) >= 2}
    values = tuple(_energy(r) for r in measured)
    if not repeated:
        return Spread(values, None, None, 0)
    pooled_df = sum(len(xs) - 1 for xs in repeated.values())
    # total variance = Σ_g c_g·s_g²: a group's own runs weigh 1 each, the others share the pooled
    # estimate, whose weight on group g is (n_g - 1) / pooled_df per run
    others = sum(1 for r in ended if r.get("group") not in repeated)
    terms = []
    for g, xs in repeated.items():
        own = sum(1 for r in ended if r.get("group") == g)
        weight = own + others * (len(xs) - 1) / pooled_df
        terms.append((weight * _variance(xs), len(xs) - 1))
    total_var = math.fsum(v for v, _ in terms)
    return Spread(values, total_var, satterthwaite(terms), len(repeated))


def satterthwaite(terms: Iterable[tuple[float, float]]) -> float:
    """Degrees of freedom of a sum of variance estimates ``[(v_i, df_i)]`` (inf when it is 0)."""
    terms = list(terms)
    total = math.fsum(v for v, _ in terms)
    spread = math.fsum(v * v / df for v, df in terms if v)
    return total * total / spread if spread else math.inf


def interval(earlier_total_j: float, later_total_j: float, earlier: Spread | None, later: Spread | None,
             level: float = stats.LEVEL) -> dict[str, Any] | None:
    """The two changes (later vs earlier) with their intervals, or None unless both sweeps have
    repeats.

    Returns ``{"level", "mean_change", "mean_change_ci", "mean_df", "total_change",
    "total_change_ci", "total_df", "outside"}``: changes as fractions (-0.31 is 31 % less), each
    interval as ``[low, high]``, and ``outside`` true when the J/run interval lies wholly below
    no change and the total's wholly above.
    """
    if earlier is None or later is None or not (earlier.has_repeats and later.has_repeats):
        return None
    if earlier_total_j <= 0 or min(earlier.measured_j) <= 0 or min(later.measured_j) <= 0:
        return None
    r = stats.ratio(earlier.measured_j, later.measured_j, level)
    mean_ci = [r.ci95[0] - 1.0, r.ci95[1] - 1.0]
    diff = later_total_j - earlier_total_j
    var = earlier.total_var_j2 + later.total_var_j2
    df = satterthwaite([(earlier.total_var_j2, earlier.total_df), (later.total_var_j2, later.total_df)])
    half = stats.t_quantile(df, level) * math.sqrt(var) if var else 0.0
    total_ci = [(diff - half) / earlier_total_j, (diff + half) / earlier_total_j]
    return {
        "level": level,
        "mean_change": r.ratio - 1.0, "mean_change_ci": mean_ci, "mean_df": r.df,
        "total_change": diff / earlier_total_j, "total_change_ci": total_ci, "total_df": df,
        "outside": mean_ci[1] < 0.0 and total_ci[0] > 0.0,
    }
