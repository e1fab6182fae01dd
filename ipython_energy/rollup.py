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
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from .rebound import NO_INTERVAL, Spread, interval

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


def build_sweep_data(sweep: Mapping[str, Any], runs: Iterable[Mapping[str, Any]], *,
                     earlier: Mapping[str, Any] | None = None, cache: dict | None = None) -> dict[str, Any]:
    """The sweep as the sidebar and the charts draw it.

    ``sweep`` is a header as :func:`~ipython_energy.layout.sweep_header` makes it (at least
    ``name``; ``planned`` and ``budget_j`` when set); ``runs`` are rows as
    :func:`~ipython_energy.layout.run_row` makes them (rows of ``kind`` ``group`` are left out).

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
    numbers come from a model rather than a sensor).  ``hosts`` is the energy per host
    (:func:`ipython_energy.sweep_window.hosts`); ``totals`` counts its ``hosts`` and ``processes``.

    ``earlier`` (``{"runs": n, "energy_j": e}``) stands for ended runs before ``runs`` that were
    not read yet (a big sweep's first view): numbering starts after them and their energy
    (between-runs time included) starts the rising total and counts in the totals; the
    result then carries ``earlier``.

    ``cache`` (a dict the caller keeps between calls for the same sweep) makes a big sweep
    cheap to rebuild: the runs before its first running run are taken as they were when the
    same row objects come first again (the reader keeps the rows of unchanged runs), and only
    the rest is recomputed.
    """
    from .sweep_window import host_tally, hosts_of

    # A group of repeats' parent run is a child of its sweep but not a run of it: its repeats are.
    ordered = _in_order((row for row in runs if row.get("kind", "run") != "group"), cache)
    earlier_runs = int((earlier or {}).get("runs") or 0)
    earlier_j = (number((earlier or {}).get("energy_j")) or 0.0) if earlier_runs else 0.0
    frozen = _frozen_prefix(cache, ordered, (earlier_runs, earlier_j))
    if frozen is not None:
        done = len(frozen["rows"])
        out_runs, cumulative, estimated = list(frozen["out"]), frozen["cumulative"], frozen["estimated"]
        ended, gaps, tally = list(frozen["ended"]), list(frozen["gaps"]), host_tally(frozen["out"][:0], frozen["tally"])
    else:
        done, out_runs, cumulative, estimated = 0, [], earlier_j, False
        ended, gaps, tally = ([earlier_j] if earlier_runs else []), [], host_tally([])
    running_n = 0
    for position, row in enumerate(ordered[done:], start=earlier_runs + done + 1):
        status = row.get("status", "finished")
        if cache is not None and status == "running" and frozen is None:
            frozen = _freeze(cache, ordered, out_runs, (earlier_runs, earlier_j), cumulative, estimated,
                             ended, gaps, tally)
        final = number(row.get("energy_j"))
        live_value = number(row.get("live_energy_j"))
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
        host_tally(out_runs[-1:], tally)
    if cache is not None and frozen is None:
        _freeze(cache, ordered, out_runs, (earlier_runs, earlier_j), cumulative, estimated, ended, gaps, tally)
    planned = whole(sweep.get("planned"))
    budget = number(sweep.get("budget_j"))
    after = number(sweep.get("between_after_j")) or 0.0
    cumulative += after
    rolled = totals(ended, planned, between_j=gaps + [after])
    if earlier_runs:  # one figure stood for that many runs
        n = rolled.runs + earlier_runs - 1
        rolled = rolled._replace(runs=n, mean_energy_per_run_j=mean_per_run(rolled.energy_j, n),
                                 forecast_energy_j=forecast(rolled.energy_j, n, planned))
    per_host = hosts_of(tally)
    data = {"sweep": dict(sweep), "runs": out_runs, "hosts": per_host, "totals": {
        "runs": len(out_runs) + earlier_runs,
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
        "hosts": len(per_host),
        "processes": sum(h["processes"] for h in per_host),
    }}
    if earlier_runs:
        data["earlier"] = {"runs": earlier_runs, "energy_j": earlier_j}
    return data


def _in_order(runs: Iterable[Mapping[str, Any]], cache: dict | None) -> list:
    """The runs in run order; with a cache, only those not in its frozen prefix are sorted
    when the rest all come after it."""
    rows = list(runs)
    if cache and cache.get("rows"):
        known = cache["ids"]
        fresh = [r for r in rows if id(r) not in known]
        if len(rows) - len(fresh) == len(cache["rows"]):
            fresh.sort(key=_run_order)
            if not fresh or _run_order(fresh[0]) > cache["last_key"]:
                return cache["rows"] + fresh
    return sorted(rows, key=_run_order)


def _frozen_prefix(cache: dict | None, ordered: list, earlier: tuple) -> dict | None:
    """The cached state after the runs that came before the first running run last time, if
    the same row objects (unchanged runs) still come first; else None."""
    if not cache or cache.get("earlier") != earlier:
        return None
    rows = cache["rows"]
    if len(ordered) < len(rows) or ordered[:len(rows)] != rows:  # identity first: fast when unchanged
        return None
    return cache


def _freeze(cache: dict, ordered: list, out_runs: list, earlier: tuple, cumulative: float, estimated: bool,
            ended: list, gaps: list, tally: dict) -> dict:
    """Remember the state after ``out_runs`` (all ended, in order) for the next build."""
    from .sweep_window import host_tally

    rows = ordered[:len(out_runs)]
    cache.clear()
    cache.update(rows=rows, ids={id(r) for r in rows}, last_key=_run_order(rows[-1]) if rows else None,
                 out=list(out_runs), earlier=earlier, cumulative=cumulative, estimated=estimated,
                 ended=list(ended), gaps=list(gaps), tally=host_tally([], tally))
    return cache


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


def format_interval(low: float, high: float) -> str:
    """``(-0.38, -0.24)`` -> ``"−38…−24%"``."""
    return f"{format_percent(low)[:-1]}\u2026{format_percent(high)}"


def _rebound_label(mean_change: float, total_change: float, noise: Mapping[str, Any] | None) -> str:
    if noise is None:
        return f"{format_percent(mean_change)} J/run, {format_percent(total_change)} total"
    level = round(noise["level"] * 100)
    return (f"{format_percent(noise['mean_change'])} J/run ({level}% CI {format_interval(*noise['mean_change_ci'])}), "
            f"{format_percent(noise['total_change'])} total ({level}% CI {format_interval(*noise['total_change_ci'])})")


def _rebound_record(later: Mapping[str, Any], earlier: Mapping[str, Any], noise: Mapping[str, Any] | None,
                    note: str) -> dict[str, Any]:
    mean_change = percent_change(later["mean_energy_per_run_j"], earlier["mean_energy_per_run_j"])
    total_change = percent_change(later["energy_j"], earlier["energy_j"])
    return {
        "run_id": later["run_id"], "name": later["name"],
        "vs_run_id": earlier["run_id"], "vs_name": earlier["name"],
        "mean_energy_per_run_j": later["mean_energy_per_run_j"],
        "vs_mean_energy_per_run_j": earlier["mean_energy_per_run_j"],
        "energy_j": later["energy_j"], "vs_energy_j": earlier["energy_j"],
        "mean_change": mean_change, "total_change": total_change,
        "interval": noise, "note": note,
        "label": _rebound_label(mean_change, total_change, noise),
    }


def _no_interval_note(later: Mapping[str, Any], earlier: Mapping[str, Any], spreads: dict) -> str:
    bare = [s["name"] for s in (earlier, later) if not (spreads.get(s["run_id"]) and spreads[s["run_id"]].has_repeats)]
    return NO_INTERVAL if len(bare) != 1 else f"{NO_INTERVAL} (no repeats in {bare[0]})"


def check_rebounds(sweeps: Iterable[Mapping[str, Any]],
                   spread_of: Callable[[str], Spread | None] | None = None) -> tuple[list[dict], list[dict]]:
    """The rebounds, and the apparent ones that run-to-run noise explains.

    ``sweeps`` need ``run_id``, ``name``, ``start_time_ms``, ``mean_energy_per_run_j`` and
    ``energy_j``; sweeps without a mean (no run ended yet) take no part.  A later sweep whose
    mean J/run is lower than an earlier one's while its total is higher rebounds, unless both
    have repeats (``spread_of(run_id)``, see :mod:`ipython_energy.rebound`, is asked only for
    such pairs): then the fall in J/run and the rise in total must both lie outside their 95 %
    intervals.  Each rebounding sweep is reported once, against the latest earlier sweep it
    rebounds from; a pair that noise explains is reported (once per later sweep, the latest) in
    the second list and the search goes on to older sweeps.

    A record is ``{"run_id", "name", "vs_run_id", "vs_name", "mean_energy_per_run_j",
    "vs_mean_energy_per_run_j", "energy_j", "vs_energy_j", "mean_change", "total_change",
    "interval", "note", "label"}`` with changes as fractions (-0.58 is 58 % less) from the
    sweeps' own figures; ``interval`` is :func:`ipython_energy.rebound.interval`'s dict (its own
    J/run change is over measured runs only) or None with the ``note`` "no repeats: no interval";
    the label reads ``"−58% J/run, +110% total"``, or with an interval
    ``"−31% J/run (95% CI −38…−24%), +52% total (95% CI +40…+64%)"``.
    """
    usable = [s for s in sweeps if number(s.get("mean_energy_per_run_j")) and number(s.get("energy_j")) is not None]
    usable.sort(key=lambda s: (s.get("start_time_ms") or 0, s["run_id"]))
    spreads: dict[str, Spread | None] = {}

    def spread(run_id: str) -> Spread | None:
        if run_id not in spreads:
            spreads[run_id] = spread_of(run_id) if spread_of else None
        return spreads[run_id]

    found, noise_only = [], []
    for i, later in enumerate(usable):
        explained = None
        for earlier in reversed(usable[:i]):
            if (percent_change(later["mean_energy_per_run_j"], earlier["mean_energy_per_run_j"]) is None
                    or percent_change(later["energy_j"], earlier["energy_j"]) is None):
                continue
            if not (later["mean_energy_per_run_j"] < earlier["mean_energy_per_run_j"]
                    and later["energy_j"] > earlier["energy_j"]):
                continue
            noise = interval(earlier["energy_j"], later["energy_j"], spread(earlier["run_id"]), spread(later["run_id"]))
            if noise is None:
                found.append(_rebound_record(later, earlier, None, _no_interval_note(later, earlier, spreads)))
                break
            if noise["outside"]:
                found.append(_rebound_record(later, earlier, noise, "both changes outside their 95% intervals"))
                break
            if explained is None:
                explained = _rebound_record(later, earlier, noise, "within run-to-run noise: no rebound claimed")
        if explained is not None and not (found and found[-1]["run_id"] == later["run_id"]):
            noise_only.append(explained)
    return found, noise_only


def find_rebounds(sweeps: Iterable[Mapping[str, Any]],
                  spread_of: Callable[[str], Spread | None] | None = None) -> list[dict[str, Any]]:
    """The rebounding sweeps of :func:`check_rebounds`."""
    return check_rebounds(sweeps, spread_of)[0]


def build_experiment_data(experiment: Mapping[str, Any], headers: Iterable[Mapping[str, Any]],
                          spread_of: Callable[[str], Spread | None] | None = None) -> dict[str, Any]:
    """Sweeps side by side (oldest first) with their rebound flags (see :func:`check_rebounds`):
    each sweep's ``rebound`` and ``within_noise`` records (or None), and both lists."""
    sweeps = sorted((sweep_summary(h) for h in headers), key=lambda s: (s.get("start_time_ms") or 0, s["run_id"]))
    rebounds, within_noise = check_rebounds(sweeps, spread_of)
    by_id = {r["run_id"]: r for r in rebounds}
    noise_by_id = {r["run_id"]: r for r in within_noise}
    for s in sweeps:
        s["rebound"] = by_id.get(s["run_id"])
        s["within_noise"] = noise_by_id.get(s["run_id"])
    return {"experiment": dict(experiment), "sweeps": sweeps, "rebounds": rebounds, "within_noise": within_noise}
