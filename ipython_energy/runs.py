"""The handles a user holds: :class:`Sweep`, :class:`Run`, :class:`Stage`, and one measured cell's
:class:`CellScope`.

Each carries its running totals and asks its :class:`~ipython_energy.tracking.Tracker` to end it;
nothing here talks to the writer or MLflow.
"""

from __future__ import annotations

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


@dataclass
class Sweep:
    """An MLflow parent run whose total rises as its runs finish.

    ``total_j`` is the sum of the ``energy_j`` of the runs this process finished in it.
    """

    tracker: "Tracker"
    name: str
    uid: str
    planned: int | None = None
    budget_j: float | None = None
    stop_at_budget: bool = False
    runs: list["Run"] = field(default_factory=list)
    total_j: float = 0.0
    ended: bool = False

    @property
    def finished_runs(self) -> int:
        return sum(1 for r in self.runs if r.measurement is not None)

    @property
    def mean_j_per_run(self) -> float | None:
        return rollup.mean_per_run(self.total_j, self.finished_runs)

    @property
    def forecast_j(self) -> float | None:
        return rollup.forecast(self.total_j, self.finished_runs, self.planned)

    @property
    def over_budget(self) -> bool:
        return rollup.over_budget(self.total_j, self.budget_j)

    def describe(self) -> str:
        text = f"sweep {self.name!r}: {format_energy(self.total_j)} over {self.finished_runs} run(s)"
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
    """This process's view of ``sweep`` in the shape the charts take (rollup.build_sweep_data)."""
    rows = []
    for index, run in enumerate(sweep.runs, start=1):
        m = run.measurement
        status = "running" if m is None else {"FINISHED": "finished", "FAILED": "failed"}.get(run.status, "killed")
        rows.append({
            "run_id": run.uid, "name": run.name, "status": status, "run_index": index,
            "energy_j": None if m is None else m.energy_j,
            "live_energy_j": run.energy_j if m is None else None,
            "duration_s": None if m is None else m.duration_s,
            "params": dict(run.params),
            "provenance": {} if m is None else {
                "methods": ",".join(f"{k}={p.method}" for k, p in m.provenance.items()),
                "estimated": "true" if m.estimated else "false",
                "coverage": f"{m.coverage:.3f}"},
        })
    header = {"name": sweep.name, "planned": sweep.planned, "budget_j": sweep.budget_j,
              "status": "finished" if sweep.ended else "running"}
    return rollup.build_sweep_data(header, rows)
