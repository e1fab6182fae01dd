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
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

from . import layout, rollup
from .measurement import Measurement, format_energy
from .validate import check_name, check_params, check_units, quote, status_for

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


class SweepLedger:
    """Where the energy of one process's time in a sweep went: into runs, or between them.

    The sweep's time in this process is cut at every boundary (the sweep's start, each of its
    runs' starts and ends, the sweep's end) into stretches; each stretch's energy (the meter's
    cumulative difference between the two snapshots) goes to the runs open over it, shared
    equally (so that two overlapping runs on the same devices count the machine once), or, with
    no run open, to *between runs*; with only unlogged runs open, to their separate part.  The
    stretches lay end to end, so runs + between (+ unlogged) is the energy of the sweep's window.

    Each run's end takes its share and the between-runs energy since the previous report
    (:meth:`close`); the sweep's end takes what is left (:meth:`leave`).  All under the tracker's lock.
    """

    __slots__ = ("meter", "edge", "open", "runs_j", "between_j", "unlogged_j", "unsent_between_j", "overlapped")

    def __init__(self, meter, edge) -> None:
        self.meter = meter
        self.edge = edge
        self.open: dict[Run, float] = {}  # open run -> its share so far (unlogged runs too)
        self.runs_j = 0.0
        self.between_j = 0.0
        self.unlogged_j = 0.0
        self.unsent_between_j = 0.0
        self.overlapped: set[Run] = set()

    def _advance(self, edge) -> None:
        energy = self.meter.energy_between(self.edge, edge)
        self.edge = edge
        counted = [r for r in self.open if r.counted]
        if counted:
            share = energy / len(counted)
            for run in counted:
                self.open[run] += share
            self.runs_j += energy
        elif self.open:
            self.unlogged_j += energy
        else:
            self.between_j += energy
            self.unsent_between_j += energy

    def enter(self, run: "Run") -> None:
        """``run`` (top-level, of this sweep) began at its window's begin snapshot."""
        self._advance(run.window.begin_edge)
        if any(r.counted for r in self.open) and run.counted:
            self.overlapped.update(r for r in self.open if r.counted)
            self.overlapped.add(run)
        self.open[run] = 0.0

    def close(self, run: "Run") -> tuple[dict[str, float], dict[str, str]]:
        """``run`` ended (its window's end snapshot): its metrics and tags as a run of this sweep."""
        if run not in self.open:
            return {}, {}
        self._advance(run.window.end_edge or self.meter.mark())
        share = self.open.pop(run)
        shared = run in self.overlapped
        self.overlapped.discard(run)
        if not run.counted:
            return {}, {}
        if not shared:
            # Alone over its whole window, its share is its own measurement, exactly (the chain's
            # figure differs from it by the measurement's short-window care only).
            self.runs_j += run.measurement.energy_j - share
            share = run.measurement.energy_j
        metrics = {"sweep_share_energy_j": share, "sweep_gap_before_energy_j": self.unsent_between_j}
        self.unsent_between_j = 0.0
        return metrics, ({"energy.shares_devices": "true"} if shared else {})

    def drop(self, run: "Run") -> None:
        """``run`` no longer counts as a run (a cell's run a real run took the place of): what it
        had so far was time between runs."""
        if run in self.open:
            self._advance(self.meter.mark())
            share = self.open.pop(run)
            self.runs_j -= share
            self.between_j += share
            self.unsent_between_j += share
            self.overlapped.discard(run)

    def leave(self) -> float:
        """The sweep ends here: the between-runs energy no run's end carried."""
        self._advance(self.meter.mark())
        rest, self.unsent_between_j = self.unsent_between_j, 0.0
        return rest

    def now(self) -> tuple[float, float]:
        """(runs, between) so far, the open stretch included."""
        edge = self.meter.mark()
        energy = self.meter.energy_between(self.edge, edge)
        if any(r.counted for r in self.open):
            return self.runs_j + energy, self.between_j
        if self.open:
            return self.runs_j, self.between_j
        return self.runs_j, self.between_j + energy


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
    overlapping_runs: int = 0
    start_ms: int = 0
    #: The MLflow experiment of its parent run (None: the tracker's; another for a sweep joined by run id).
    experiment: str | None = None
    #: Whether MLflow was told of this sweep (its SweepStart was sent), and with which plan.
    logged: bool = False
    logged_plan: tuple[int | None, float | None] = (None, None)
    energies: array = field(default_factory=lambda: array("d"))
    statuses: bytearray = field(default_factory=bytearray)
    details: deque = field(default_factory=lambda: deque(maxlen=CHART_DETAIL_RUNS))
    _partials: list = field(default_factory=list, repr=False)
    #: Where this process's time in the sweep went (None: made without a meter, as in tests of the roll-up).
    ledger: SweepLedger | None = field(default=None, repr=False)

    @property
    def runs_energy_j(self) -> float:
        """This process's energy inside the sweep's runs so far (overlapping runs counted once)."""
        return self.ledger.now()[0] if self.ledger is not None else self.total_j

    @property
    def between_runs_energy_j(self) -> float:
        """This process's energy in the sweep between its runs so far (before, between, after them)."""
        return self.ledger.now()[1] if self.ledger is not None else 0.0

    @property
    def energy_j(self) -> float:
        """The energy of the sweep's window in this process so far: runs + between runs."""
        if self.ledger is None:
            return self.total_j
        runs, between = self.ledger.now()
        return runs + between

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

    def finished(self, run: "Run", part: Mapping[str, float] | None = None, shared: bool = False) -> None:
        """Count ``run``, a top-level run of this sweep that just ended (the tracker's lock is held).

        ``part``: the run's ``sweep_share_energy_j`` and ``sweep_gap_before_energy_j``
        (:meth:`SweepLedger.close`); the total grows by both, as MLflow's ``sweep_energy_j`` does.
        """
        m = run.measurement
        if not run.counted:
            self.unlogged_j += m.energy_j
            self.unlogged_runs += 1
            return
        self.energies.append(m.energy_j)
        self.overlapping_runs += shared
        for value in (part or {"sweep_share_energy_j": m.energy_j}).values():
            rollup.add_exactly(self._partials, value)
        self.total_j = math.fsum(self._partials)  # what MLflow's sweep_energy_j sums, exactly
        self.statuses.append(_STATUS_CODES.get(run.status or "", 2))
        self.details.append((len(self.energies), run.uid, run.name, m.energy_j, m.duration_s, run.params, {
            "methods": ",".join(f"{k}={p.method}" for k, p in m.provenance.items()),
            "estimated": "true" if m.estimated else "false",
            "coverage": f"{m.coverage:.3f}"}))

    def left(self, between_j: float) -> None:
        """This process left the sweep; ``between_j`` after its last run joins the total."""
        rollup.add_exactly(self._partials, between_j)
        self.total_j = math.fsum(self._partials)

    def describe(self) -> str:
        text = f"sweep {self.name!r}: {format_energy(self.total_j)} over {self.finished_runs} run(s)"
        if self.unlogged_runs:
            text += f" + {format_energy(self.unlogged_j)} in {self.unlogged_runs} unlogged run(s)"
        if self.ledger is not None and self.finished_runs:
            # As of the last boundary (a run's end, just now for a cell's summary): no sensor read here.
            text += (f", in runs {format_energy(self.ledger.runs_j)}, "
                     f"between runs {format_energy(self.ledger.between_j)}")
        text += self._members()
        if self.overlapping_runs:
            text += (f", {self.overlapping_runs} run(s) overlapped on the same devices "
                     "(the machine counted once, shared between them)")
        if self.planned and self.forecast_j is not None:
            text += f", forecast {format_energy(self.forecast_j)} for {self.planned}"
        if self.budget_j is not None:
            if self.over_budget:
                text += f" ⚠ OVER BUDGET {format_energy(self.budget_j)} by {self.total_j / self.budget_j - 1:.0%}"
            else:
                text += f", budget {format_energy(self.budget_j)} ({self.total_j / self.budget_j:.0%} used)"
        return text

    def _members(self) -> str:
        """``; all members in MLflow: 12.3 kJ over 40 runs from 3 hosts, 5 processes``: the sweep as
        the writer last derived it from MLflow, said only when other processes contributed (the
        figures above are this process's own)."""
        view = self.tracker.sweep_view(self)
        if view is None or view.processes <= 1:
            return ""
        return (f"; all members in MLflow: {format_energy(view.totals.energy_j)} over {view.step} run(s) "
                f"from {view.hosts} host(s), {view.processes} process(es)")

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
    #: The thread that opened it (``threading.current_thread()``; an id could be reused by a later
    #: thread): runs nest within one thread only.
    thread: Any = None
    #: What :meth:`annotate` added: params, tags and step-0 metrics that reach MLflow with the run's end.
    extra_params: dict[str, str] = field(default_factory=dict)
    extra_tags: dict[str, str] = field(default_factory=dict)
    extra_metrics: dict[str, float] = field(default_factory=dict)

    __hash__ = object.__hash__  # a ledger keys its open runs by identity

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

    def annotate(self, *, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, float] | None = None) -> None:
        """Add params, tags and final metrics (step 0) known only while the run is open, such as
        the hyperparameters a sweep engine picks inside the run (:mod:`ipython_energy.optuna`).

        They reach MLflow with the run's end, in the same batch as its energy; a metric named like
        one of the run's own (``energy_j``…) is left to the run's figure.  Raises ``ValueError``
        for a name MLflow cannot store or a metric that is not a finite number, and
        :class:`EnergyError` once the run has ended.
        """
        if self.measurement is not None:
            raise EnergyError(f"run {self.name!r} has ended; annotate it before it ends")
        params = check_params(params)
        tags = {check_name(k, "tag"): str(v) for k, v in (tags or {}).items()}
        checked = {}
        for key, value in (metrics or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"metric {quote(key)} must be a finite number, not {quote(value)}")
            checked[check_name(key, "metric")] = float(value)
        self.extra_params.update(params)
        self.extra_tags.update(tags)
        self.extra_metrics.update(checked)

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
