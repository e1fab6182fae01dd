"""A sweep's roll-up: its total, mean per run, forecast, budget state and rebound, computed one way.

The tracker (what the summary line says), the writer (the ``sweep_*`` metrics it logs on the
parent run) and the read side (the sidebar, ``%energy chart``, the ``energy_sweep.html``
artifact) all take their figures from here, so the three can never disagree on a rule.

Everything is pure: plain numbers and dicts in, plain numbers and dicts out. The rows that
:func:`build_sweep_data` takes are made from MLflow runs by :func:`ipython_energy.layout.run_row`
and :func:`ipython_energy.layout.sweep_header`, or from a tracker's own runs.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, NamedTuple

#: The MLflow statuses of a run that ended.
ENDED_STATUSES = ("FINISHED", "FAILED", "KILLED")


def number(value: Any) -> float | None:
    """A finite float, or None (for missing, unparsable, NaN and infinite values)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def whole(value: Any) -> int | None:
    out = number(value)
    return int(out) if out is not None else None


def truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


# ---------------------------------------------------------------------------------------
# the rules
# ---------------------------------------------------------------------------------------
def mean_per_run(total_j: float, runs: int) -> float | None:
    """Joules per ended run, or None before any run ended."""
    return total_j / runs if runs else None


def forecast(total_j: float, runs: int, planned: int | None) -> float | None:
    """The sweep's expected total: mean per ended run x max(planned, ended runs); None without a plan."""
    mean = mean_per_run(total_j, runs)
    if mean is None or not planned:
        return None
    return mean * max(int(planned), runs)


def over_budget(total_j: float, budget_j: float | None) -> bool:
    return budget_j is not None and total_j > budget_j


def budget_state(total_j: float, budget_j: float | None) -> str | None:
    """The ``energy.budget_state`` tag: ``over``, ``ok``, or None without a budget."""
    if budget_j is None:
        return None
    return "over" if over_budget(total_j, float(budget_j)) else "ok"


def add_exactly(partials: list[float], x: float) -> None:
    """Add ``x`` to the running sum held as ``partials`` (Shewchuk's non-overlapping partials, as
    ``math.fsum`` keeps them): ``math.fsum(partials)`` is then exactly ``math.fsum`` of every value
    added, in any order, while ``partials`` stays a few floats long."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


class SweepTotals(NamedTuple):
    """The roll-up of a sweep's ended runs (the parent run's ``sweep_*`` metrics).

    ``energy_j`` is the sweep's energy: in its runs (``runs_energy_j``, overlapping runs counted
    once) and between them (``between_runs_energy_j``).  The mean per run, the forecast and the
    budget count the whole sweep, between-runs time included: that time is part of what each run
    costs.
    """

    runs: int
    energy_j: float
    mean_energy_per_run_j: float | None
    forecast_energy_j: float | None
    budget_state: str | None
    runs_energy_j: float = 0.0
    between_runs_energy_j: float = 0.0


def totals(ended_energy_j: Iterable[float], planned: int | None = None,
           budget_j: float | None = None, *, between_j: Iterable[float] = ()) -> SweepTotals:
    """The roll-up of the runs that ended with these energies (their shares of the sweep's energy
    in runs), and of the between-runs energy the sweep's members reported.

    The sums are exactly rounded (``math.fsum``), so the total does not depend on the order in
    which writers in several processes learn of the runs.
    """
    done = list(ended_energy_j)
    between = list(between_j)
    runs_j = math.fsum(done)
    total = math.fsum(done + between)
    n = len(done)
    return SweepTotals(n, total, mean_per_run(total, n), forecast(total, n, planned), budget_state(total, budget_j),
                       runs_j, math.fsum(between))


# ---------------------------------------------------------------------------------------
# a sweep's runs in order, with the rising total: the sidebar's, the chart's and the artifact's
# ---------------------------------------------------------------------------------------
def _run_order(row: Mapping[str, Any]) -> tuple:
    index = row.get("run_index")
    return (index if index is not None else math.inf, row.get("start_time_ms") or 0, row.get("run_id", ""))


def build_sweep_data(sweep: Mapping[str, Any], runs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The sweep as the sidebar and the charts draw it.

    ``sweep`` is a header as :func:`~ipython_energy.layout.sweep_header` makes it (at least
    ``name``; ``planned`` and ``budget_j`` when set); ``runs`` are rows as
    :func:`~ipython_energy.layout.run_row` makes them.

    Returns ``{"sweep": header, "runs": [...], "totals": {...}}`` (the runs share their
    ``params`` / ``provenance`` dicts with the input rows: treat them as read-only) where each run gains
    ``index`` (1-based position in run order), ``energy_j`` (the final energy, or the
    latest ``live_energy_j`` while the run is open, with ``live: true``) and
    ``cumulative_j`` (the rising total up to and including this run: the sweep's energy, so the
    between-runs time before each run and each run's share of the energy in runs).  ``totals``
    holds ``energy_j`` (everything spent so far, live runs included), ``ended_runs`` /
    ``ended_energy_j`` (runs that ended with an energy, any status, and the between-runs energy:
    the writer's ``sweep_runs`` / ``sweep_energy_j``), ``runs_energy_j`` /
    ``between_runs_energy_j`` (its two parts), ``overlapping_runs``, ``mean_energy_per_run_j`` (ended energy / ended
    runs), ``forecast_energy_j`` (mean x max(planned, ended runs), only with ``planned``),
    ``budget_j``, ``budget_used`` (fraction) and ``over_budget``, ``estimated`` (any run's
    numbers come from a model rather than a sensor), ``hosts`` (the hosts its runs ran on,
    sorted) and ``processes`` (how many processes ran them: distinct ``session``).
    """
    ordered = sorted(runs, key=_run_order)
    out_runs: list[dict[str, Any]] = []
    cumulative = 0.0
    ended: list[float] = []
    gaps: list[float] = []
    running_n = 0
    estimated = False
    for position, row in enumerate(ordered, start=1):
        final = number(row.get("energy_j"))
        live_value = number(row.get("live_energy_j"))
        status = row.get("status", "finished")
        is_live = final is None and status == "running" and live_value is not None
        energy = final if final is not None else live_value
        share, gap = number(row.get("share_j")), number(row.get("gap_before_j")) or 0.0
        if status == "running":
            running_n += 1
        elif final is not None:
            ended.append(final if share is None else share)
            gaps.append(gap)
            cumulative += gap  # the sweep's time before this run, since the previous one
        if energy is not None:
            cumulative += energy if status == "running" or share is None else share
        prov = row.get("provenance") or {}
        if truthy(prov.get("estimated", "false")):
            estimated = True
        out_runs.append({
            **row,
            "index": position,
            "energy_j": energy,
            "live": is_live,
            "cumulative_j": cumulative,
        })
    planned = whole(sweep.get("planned"))
    budget = number(sweep.get("budget_j"))
    after = number(sweep.get("between_after_j")) or 0.0
    cumulative += after
    rolled = totals(ended, planned, between_j=gaps + [after])
    return {"sweep": dict(sweep), "runs": out_runs, "totals": {
        "runs": len(out_runs),
        "running_runs": running_n,
        "ended_runs": rolled.runs,
        "ended_energy_j": rolled.energy_j,
        "runs_energy_j": rolled.runs_energy_j,
        "between_runs_energy_j": rolled.between_runs_energy_j,
        "overlapping_runs": whole(sweep.get("overlapping_runs")) or 0,
        "energy_j": cumulative,
        "mean_energy_per_run_j": rolled.mean_energy_per_run_j,
        "planned": planned,
        "forecast_energy_j": rolled.forecast_energy_j,
        "budget_j": budget,
        "budget_used": (cumulative / budget) if budget else None,
        "over_budget": over_budget(cumulative, budget),
        "estimated": estimated,
        "hosts": sorted({(r.get("provenance") or {}).get("host") or "" for r in out_runs} - {""}),
        "processes": len({r.get("session") or (r.get("provenance") or {}).get("host") or ""
                          for r in out_runs}) if out_runs else 0,
    }}


# ---------------------------------------------------------------------------------------
# sweeps side by side, and the rebound flag
# ---------------------------------------------------------------------------------------
def percent_change(new: float, old: float) -> float | None:
    """``new / old - 1`` (0.1 is +10 %), or None when ``old`` is not positive."""
    if old is None or new is None or old <= 0:
        return None
    return new / old - 1.0


def format_percent(change: float) -> str:
    """``-0.58`` -> ``"−58%"`` (with a true minus sign), ``1.1`` -> ``"+110%"``."""
    pct = round(change * 100)
    return f"+{pct}%" if pct >= 0 else f"\u2212{-pct}%"


def sweep_summary(header: Mapping[str, Any]) -> dict[str, Any]:
    """One sweep's line in the experiment view, from its header (the writer's roll-up)."""
    runs = header.get("logged_runs") or 0
    total = header.get("logged_energy_j")
    mean = header.get("logged_mean_energy_per_run_j")
    if mean is None and total is not None:
        mean = mean_per_run(total, runs)
    return {
        "run_id": header["run_id"],
        "name": header["name"],
        "status": header["status"],
        "start_time_ms": header.get("start_time_ms"),
        "runs": runs,
        "planned": header.get("planned"),
        "energy_j": total if total is not None else 0.0,
        "mean_energy_per_run_j": mean,
        "budget_j": header.get("budget_j"),
        "budget_state": header.get("budget_state"),
        # how many hosts and processes ran its counted runs (the writer's sweep_hosts / sweep_processes)
        "hosts": header.get("logged_hosts"),
        "processes": header.get("logged_processes"),
    }


def find_rebounds(sweeps: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Sweeps whose mean J/run is lower than an earlier sweep's while their total is higher.

    ``sweeps`` need ``run_id``, ``name``, ``start_time_ms``, ``mean_energy_per_run_j`` and
    ``energy_j``; sweeps without a mean (no run ended yet) take no part.  Each rebounding
    sweep is reported once, against the latest earlier sweep it rebounds from, as
    ``{"run_id", "name", "vs_run_id", "vs_name", "mean_energy_per_run_j",
    "vs_mean_energy_per_run_j", "energy_j", "vs_energy_j", "mean_change", "total_change",
    "label"}`` with changes as fractions (-0.58 is 58 % less) and a label such as
    ``"−58% J/run, +110% total"``.
    """
    usable = [s for s in sweeps if number(s.get("mean_energy_per_run_j")) and number(s.get("energy_j")) is not None]
    usable.sort(key=lambda s: (s.get("start_time_ms") or 0, s["run_id"]))
    found = []
    for i, later in enumerate(usable):
        for earlier in reversed(usable[:i]):
            mean_change = percent_change(later["mean_energy_per_run_j"], earlier["mean_energy_per_run_j"])
            total_change = percent_change(later["energy_j"], earlier["energy_j"])
            if mean_change is None or total_change is None:
                continue
            if later["mean_energy_per_run_j"] < earlier["mean_energy_per_run_j"] and later["energy_j"] > earlier["energy_j"]:
                found.append({
                    "run_id": later["run_id"], "name": later["name"],
                    "vs_run_id": earlier["run_id"], "vs_name": earlier["name"],
                    "mean_energy_per_run_j": later["mean_energy_per_run_j"],
                    "vs_mean_energy_per_run_j": earlier["mean_energy_per_run_j"],
                    "energy_j": later["energy_j"], "vs_energy_j": earlier["energy_j"],
                    "mean_change": mean_change, "total_change": total_change,
                    "label": f"{format_percent(mean_change)} J/run, {format_percent(total_change)} total",
                })
                break
    return found


def build_experiment_data(experiment: Mapping[str, Any], headers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sweeps side by side (oldest first) with their rebound flags."""
    sweeps = sorted((sweep_summary(h) for h in headers), key=lambda s: (s.get("start_time_ms") or 0, s["run_id"]))
    rebounds = find_rebounds(sweeps)
    by_id = {r["run_id"]: r for r in rebounds}
    for s in sweeps:
        s["rebound"] = by_id.get(s["run_id"])
    return {"experiment": dict(experiment), "sweeps": sweeps, "rebounds": rebounds}
