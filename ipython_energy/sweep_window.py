"""A big sweep as the sidebar draws it: recent runs one by one, older runs binned, per host.

A sweep of 10,000 runs cannot travel to the browser as 10,000 rows every 2 s (about 3 MB),
and 10,000 bars one pixel wide say nothing anyway.  :func:`window` keeps the newest runs
one by one and folds the older ones into bins of consecutive runs (count, total, mean, min
and max J per run).  Bins are aligned on multiples of their size, so while a sweep grows
only its newest bin changes and a poll that carries only what changed stays small
(:class:`ipython_energy.server.feed.SweepFeed`).

:func:`hosts` is the sweep's energy per host and the processes that contributed, from the
runs' ``energy.host`` / ``energy.session`` (or ``energy.pid``) tags.

Pure functions over the rows :func:`ipython_energy.rollup.build_sweep_data` returns.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from .measurement import format_energy
from .rollup import add_exactly, number

#: Runs shown one by one at the end of a sweep's chart.
RECENT_RUNS = 200
#: At most this many bins for the older runs.
MAX_BINS = 100
#: Bin sizes, smallest first: a bin's size only ever steps up through these.
_SIZES = (1, 2, 5)


def bin_size(older: int, max_bins: int = MAX_BINS) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, … runs per bin that folds ``older`` runs into at
    most ``max_bins`` bins (a fixed ladder, so the size is the same from poll to poll)."""
    scale = 1
    while True:
        for step in _SIZES:
            if math.ceil(older / (step * scale)) <= max_bins:
                return step * scale
        scale *= 10


def window(runs: list[Mapping[str, Any]], *, recent: int = RECENT_RUNS, max_bins: int = MAX_BINS,
           earlier: Mapping[str, Any] | None = None,
           memo: dict | None = None) -> tuple[list[Mapping[str, Any]], list[dict[str, Any]]]:
    """Split a sweep's ordered runs into (runs shown one by one, bins of the older ones).

    ``runs`` carry ``index``, ``energy_j``, ``cumulative_j`` and ``status`` (as
    ``build_sweep_data`` makes them).  Nothing is binned until there are more than
    ``recent`` runs; then runs ``1..cut`` are binned, with ``cut`` the largest multiple of
    the bin size that leaves at least ``recent`` runs one by one.

    ``earlier`` (``{"runs", "energy_j"}``) stands for runs before ``runs`` that were not read
    yet: they become one bin marked ``loading`` with their count and energy, and no min/max.
    ``memo`` (a dict kept between calls) reuses a bin whose runs are the same row objects.
    """
    first = runs[0]["index"] if runs else 1
    bins: list[dict[str, Any]] = []
    if earlier and earlier.get("runs"):
        bins.append(_loading_bin(earlier, first))
    older = len(runs) - recent
    if older <= 0:
        return runs, bins
    size = bin_size(older, max_bins)
    cut = (runs[older - 1]["index"] // size) * size  # bins end on multiples of size
    split = max(0, cut - first + 1)  # runs carry consecutive indices from ``first``
    start = 0
    while start < split:  # each bin ends at a multiple of size
        end = min(split, start + size - (first - 1 + start) % size)
        bins.append(_cached_bin(runs[start:end], memo))
        start = end
    return runs[split:], bins


def _cached_bin(runs: list[Mapping[str, Any]], memo: dict | None) -> dict[str, Any]:
    if memo is None:
        return _bin(runs)
    key = ("bin", runs[0]["index"], runs[-1]["index"])
    hit = memo.get(key)
    if hit is not None and hit[0] == runs:  # the same row objects: compared by identity, fast
        return hit[1]
    memo[key] = (runs, _bin(runs))
    return memo[key][1]


def _bin(runs: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Consecutive runs as one bar: its span, count, energies and statuses."""
    energies = [e for e in (number(r.get("energy_j")) for r in runs) if e is not None]
    statuses: dict[str, int] = {}
    for r in runs:
        status = r.get("status", "finished")
        statuses[status] = statuses.get(status, 0) + 1
    total = math.fsum(energies)
    first, last = runs[0]["index"], runs[-1]["index"]
    mean = total / len(energies) if energies else None
    out = {
        "first": first, "last": last, "runs": len(runs), "energy_j": total, "mean_j": mean,
        "min_j": min(energies) if energies else None, "max_j": max(energies) if energies else None,
        "cumulative_j": runs[-1].get("cumulative_j"), "statuses": statuses, "loading": False,
    }
    out["label"] = (f"runs {first}\u2013{last}: {len(runs)} runs, {format_energy(total)}, "
                    f"mean {format_energy(mean)}, min {format_energy(out['min_j'])}, max {format_energy(out['max_j'])}"
                    + "".join(f"; {n} {s}" for s, n in sorted(statuses.items()) if s != "finished"))
    return out


def _loading_bin(earlier: Mapping[str, Any], first_loaded: int) -> dict[str, Any]:
    n, energy = int(earlier["runs"]), number(earlier.get("energy_j"))
    mean = energy / n if energy is not None and n else None
    return {
        "first": 1, "last": first_loaded - 1, "runs": n, "energy_j": energy, "mean_j": mean,
        "min_j": None, "max_j": None, "cumulative_j": energy, "statuses": {}, "loading": True,
        "label": (f"runs 1\u2013{first_loaded - 1}: {n} runs, {format_energy(energy)} "
                  "(from the sweep's logged totals; reading these runs)"),
    }


def hosts(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Energy per host: ``[{host, runs, energy_j, processes}]``, most energy first.

    ``energy_j`` counts what the host's runs spent (the final energy, or the live one of a
    running run); ``processes`` the distinct processes (``energy.session`` tag, else
    ``energy.pid``) that logged them.  Runs without an ``energy.host`` tag count as host
    ``"unknown"``.
    """
    return hosts_of(host_tally(runs))


def host_tally(runs: Iterable[Mapping[str, Any]], tally: dict | None = None) -> dict[str, dict[str, Any]]:
    """Add ``runs`` to a running per-host tally (a copy of ``tally`` when given with no runs
    to add, so a cached tally can be extended without changing it)."""
    out = tally if tally is not None and runs else {
        host: {"runs": e["runs"], "parts": list(e["parts"]), "procs": set(e["procs"])}
        for host, e in (tally or {}).items()}
    for run in runs:
        prov = run.get("provenance") or {}
        host = run.get("host") or prov.get("host") or "unknown"
        entry = out.get(host)
        if entry is None:
            entry = out[host] = {"runs": 0, "parts": [], "procs": set()}
        entry["runs"] += 1
        energy = number(run.get("energy_j"))
        if energy is not None:
            add_exactly(entry["parts"], energy)
        process = run.get("session") or run.get("pid")
        if process:
            entry["procs"].add(str(process))
    return out


def hosts_of(tally: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The tally as :func:`hosts` returns it."""
    out = [{"host": host, "runs": e["runs"], "energy_j": math.fsum(e["parts"]), "processes": len(e["procs"])}
           for host, e in tally.items()]
    out.sort(key=lambda h: (-h["energy_j"], h["host"]))
    return out
