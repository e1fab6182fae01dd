"""The handles a user holds: :class:`Sweep`, :class:`Run`, :class:`Stage`, and one measured cell's
:class:`CellScope`.

Each carries its running totals and asks its :class:`~ipython_energy.tracking.Tracker` to end it;
nothing here talks to the writer or MLflow.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from . import layout, rollup
from .measurement import Measurement, format_energy
from .validate import check_units, status_for

if TYPE_CHECKING:
    from .tracking import Tracker


class EnergyError(RuntimeError):
    """A request the tracker cannot honour (the message says why and what to do)."""


class BudgetExceeded(EnergyError):
    """A sweep's energy budget is spent and the sweep was told to stop further runs."""


#: How many of a sweep's latest finished runs keep their name, params and provenance in the session,
#: for ``%energy chart``'s hover text; older runs keep their energy and status only (9 bytes each).
CHART_DETAIL_RUNS = 500

_STATUS_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 2}
_STATUS_WORDS = ("finished", "failed", "killed")


@dataclass
class Sweep:
    """An MLflow parent run whose total rises as its runs finish.

    ``total_j`` and :attr:`finished_runs` are the sum of the ``energy_j`` of, and the number of, the
    sweep's *top-level logged* runs this process finished: exactly the children whose energies the
    parent run's ``sweep_energy_j`` sums in MLflow.  A run nested in another run is counted in the
    enclosing run only; a run measured with ``--no-log`` while the session logs is kept apart, in
    ``unlogged_j`` / ``unlogged_runs`` (docs/metrics.md, "What a sweep counts").  With logging off
    for the whole session every run counts, since nothing reaches MLflow.

    Finished runs are not kept: only these aggregates, each counted run's energy and status
    (``energies``, ``statuses``), and the last :data:`CHART_DETAIL_RUNS` runs' rows for the chart.
    """

    tracker: "Tracker"
    name: str
    uid: str
    planned: int | None = None
    budget_j: float | None = None
    stop_at_budget: bool = False
    total_j: float = 0.0
    ended: bool = False
    unlogged_j: float = 0.0
    unlogged_runs: int = 0
    start_ms: int = 0
    #: Whether MLflow was told of this sweep (its SweepStart was sent), and with which plan.
    logged: bool = False
    logged_plan: tuple[int | None, float | None] = (None, None)
    energies: array = field(default_factory=lambda: array("d"))
    statuses: bytearray = field(default_factory=bytearray)
    details: deque = field(default_factory=lambda: deque(maxlen=CHART_DETAIL_RUNS))
    _partials: list = field(default_factory=list, repr=False)

    @property
    def finished_runs(self) -> int:
        return len(self.energies)

    @property
    def mean_j_per_run(self) -> float | None:
        return rollup.mean_per_run(self.total_j, self.finished_runs)

    @property
    def forecast_j(self) -> float | None:
        return rollup.forecast(self.total_j, self.finished_runs, self.planned)

    @property
    def over_budget(self) -> bool:
        return rollup.over_budget(self.total_j, self.budget_j)

    @property
    def plan(self) -> tuple[int | None, float | None]:
        return (self.planned, self.budget_j)

    def finished(self, run: "Run") -> None:
        """Count ``run``, a top-level run of this sweep that just ended (the tracker's lock is held)."""
        m = run.measurement
        if not run.counted:
            self.unlogged_j += m.energy_j
            self.unlogged_runs += 1
            return
        self.energies.append(m.energy_j)
        rollup.add_exactly(self._partials, m.energy_j)
        self.total_j = math.fsum(self._partials)  # what MLflow's sweep_energy_j sums, exactly
        self.statuses.append(_STATUS_CODES.get(run.status or "", 2))
        self.details.append((len(self.energies), run.uid, run.name, m.energy_j, m.duration_s, run.params, {
            "methods": ",".join(f"{k}={p.method}" for k, p in m.provenance.items()),
            "estimated": "true" if m.estimated else "false",
            "coverage": f"{m.coverage:.3f}"}))

    def describe(self) -> str:
        text = f"sweep {self.name!r}: {format_energy(self.total_j)} over {self.finished_runs} run(s)"
        if self.unlogged_runs:
            text += f" + {format_energy(self.unlogged_j)} in {self.unlogged_runs} unlogged run(s)"
        if self.planned and self.forecast_j is not None:
            text += f", forecast {format_energy(self.forecast_j)} for {self.planned}"
        if self.budget_j is not None:
            if self.over_budget:
                text += f" ⚠ OVER BUDGET {format_energy(self.budget_j)} by {self.total_j / self.budget_j - 1:.0%}"
            else:
                text += f", budget {format_energy(self.budget_j)} ({self.total_j / self.budget_j:.0%} used)"
        return text

    def end(self) -> None:
        self.tracker.end_sweep(self)

    def __enter__(self) -> "Sweep":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.tracker.end_sweep(self, status=status_for(exc_type))


@dataclass
class Run:
    """One MLflow run: a window of energy, its cells, stages and units of work."""

    tracker: "Tracker"
    name: str
    uid: str
    params: dict[str, str]
    sweep: Sweep | None
    window: Any
    implicit: bool = False
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)
    units: dict[str, float] = field(default_factory=dict)
    cells: int = 0
    measurement: Measurement | None = None
    status: str | None = None
    logged: bool = True
    discarded: bool = False
    #: The run this one was opened inside (still open then): its energy is counted there, not in the sweep.
    parent: "Run | None" = None

    @property
    def counted(self) -> bool:
        """Whether this run, once ended, counts in its sweep's total (see :class:`Sweep`)."""
        return self.parent is None and not self.discarded and (self.logged or not self.tracker.config.log)

    @property
    def energy_j(self) -> float:
        """Energy so far (running) or final."""
        m = self.measurement or self.window.snapshot()
        return m.energy_j

    @property
    def running(self) -> bool:
        return self.measurement is None

    def add_units(self, n: float, unit: str = "samples") -> None:
        """Declare ``n`` units of work done in this run (summed per unit) for ``energy_per_<unit>_j``."""
        n, unit = check_units(n, unit)
        self.units[unit] = self.units.get(unit, 0.0) + n

    def end(self, status: str = "FINISHED") -> Measurement:
        return self.tracker.end_run(self, status)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.tracker.end_run(self, status_for(exc_type))


@dataclass
class Stage:
    """A named part of a run (``data``, ``forward``, ``backward``); its energy adds to ``stage_<name>_energy_j``."""

    tracker: "Tracker"
    name: str
    run: Run | None
    window: Any
    measurement: Measurement | None = None

    @property
    def energy_j(self) -> float:
        return (self.measurement or self.window.snapshot()).energy_j

    def __enter__(self) -> "Stage":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.measurement = self.window.end()
        if self.run is not None and self.run.measurement is None:
            layout.combine_stage(self.run.stages, self.name, self.measurement)


class CellScope(NamedTuple):
    """One measured cell: its run, its window, and how it ends (:meth:`Tracker.begin_cell`)."""

    tracker: Tracker
    run: Run
    window: Any
    owns_run: bool
    log: bool

    def end(self, status: str, execution_count: int | None) -> Measurement:
        """Close the cell's window (and its run, when the run was the cell's own) and log it."""
        tracker, run = self.tracker, self.run
        if not self.owns_run:
            m = self.window.end()
            if self.log:
                tracker.log_cell(run, m, execution_count)
            return m
        if self.log:
            return tracker.end_cell_run(run, status, execution_count)
        return tracker.end_run(run, status)


def sweep_data(sweep: Sweep) -> dict[str, Any]:
    """This process's view of ``sweep`` in the shape the charts take (rollup.build_sweep_data): the runs
    its total counts, in order, then those still running.  Runs older than the last
    :data:`CHART_DETAIL_RUNS` appear with their energy and status only."""
    rows = []
    detailed = {d[0]: d for d in sweep.details}
    for index, (energy, code) in enumerate(zip(sweep.energies, sweep.statuses), start=1):
        d = detailed.get(index)
        rows.append({
            "run_id": d[1] if d else f"{sweep.uid}#{index}", "name": d[2] if d else f"run {index}",
            "status": _STATUS_WORDS[code], "run_index": index, "energy_j": energy, "live_energy_j": None,
            "duration_s": d[4] if d else None, "params": dict(d[5]) if d else {}, "provenance": d[6] if d else {},
        })
    running = [r for r in list(sweep.tracker.open_runs)
               if r.sweep is sweep and r.parent is None and not r.discarded and r.counted]
    for index, run in enumerate(running, start=len(rows) + 1):
        rows.append({
            "run_id": run.uid, "name": run.name, "status": "running", "run_index": index,
            "energy_j": None, "live_energy_j": run.energy_j, "duration_s": None,
            "params": dict(run.params), "provenance": {},
        })
    header = {"name": sweep.name, "planned": sweep.planned, "budget_j": sweep.budget_j,
              "status": "finished" if sweep.ended else "running"}
    return rollup.build_sweep_data(header, rows)
