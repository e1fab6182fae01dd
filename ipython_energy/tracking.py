"""The tracker: the process's meter, writer, and active sweep and run (``%%energy`` and the Python API).

A :class:`Tracker` (one per process, made by :mod:`ipython_energy.runtime`) starts and ends the
handles of :mod:`ipython_energy.runs`, opens their windows on the meter, and hands every event for
MLflow to the writer, so nothing here waits on MLflow.  The active sweep and run are per context
(thread, asyncio task): :mod:`ipython_energy.scope`.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import os
import threading
import time
import uuid
import warnings
from typing import Any, Mapping

from . import events, joining, registry
from .config import Config
from .measurement import Measurement, format_energy
from .store import ChartRenderer
from .runs import BudgetExceeded, CellScope, EnergyError, Run, Stage, Sweep, SweepLedger
from .scope import Scopes
from .validate import check_name, check_params, quote


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """Everything one process needs to measure and log: meter, writer, active sweep and run."""

    def __init__(self, config: Config, *, cwd: str | None = None, meter=None, writer=None,
                 session: str | None = None, register: bool = True,
                 render_chart: ChartRenderer | None = None):
        from .sensors import discover
        from .meter import Meter

        self.config = config
        self.session = session or uuid.uuid4().hex[:16]
        self.cwd = cwd or os.getcwd()
        self.tracking_uri = config.resolved_tracking_uri(self.cwd)
        self.notes: list[str] = []
        if meter is None:
            found = discover(config.sensors, cpu_model_options={
                "idle_w_per_core": config.cpu_idle_w_per_core,
                "active_w_per_core": config.cpu_active_w_per_core,
                "tdp_w": config.cpu_tdp_w,
            })
            meter = Meter(found.sensors, interval_s=config.interval_s, idle_power_w=config.idle_power_w,
                          pue=config.pue, carbon_g_per_kwh=config.carbon_g_per_kwh, notes=found.notes,
                          low_util=config.low_util / 100.0, idle_interval_s=config.nvml_idle_interval_s)
        self.meter = meter
        self.meter.start()
        self._writer = writer
        self._render_chart = render_chart  # draws a sweep's energy_sweep.html artifact (None: no artifact)
        self._lock = threading.RLock()
        self._scopes = Scopes(self)
        self.open_runs: list[Run] = []  # every open run, of every thread and task
        self.sweeps: dict[str, Sweep] = {}
        self._joined: Sweep | None = None  # the sweep of the `sweep` setting, once a run joined it
        self._sweep_ids: dict[str, tuple[str, str]] = {}  # sweep run id -> (name, experiment)
        self._join_error: str | None = None  # why the sweep setting's run id could not be joined
        self.run_counter = 0
        self._uids = 0
        self._reported: dict[str, str] = {"spool": "ok", "mlflow": "ok"}  # each condition as last reported
        self._stop_live = threading.Event()
        self._live_thread: threading.Thread | None = None
        self._registered = False
        if register:
            self._register()
        self._start_live()
        atexit.register(self._at_exit)

    # ---- the calling context's active sweep and run ------------------------------------------
    @property
    def sweep(self) -> Sweep | None:
        """The active sweep of the calling context (see :mod:`ipython_energy.scope`)."""
        return self._scopes.sweep

    @property
    def run(self) -> Run | None:
        """The active run of the calling context (``%energy run``; a thread sees only its own)."""
        return self._scopes.run

    # ---- lazily made parts ------------------------------------------------------------------
    @property
    def writer(self):
        if self._writer is None:
            # MLflow imports it on the writer's thread; imported there only once the interpreter is
            # exiting (a short worker script), its atexit hook could no longer be registered and
            # every write would fail with "can't register atexit after shutdown".
            import concurrent.futures.thread  # noqa: F401
            from .spool import Spool, SpoolError
            from .writer import Writer

            try:
                spool = Spool.create(self.session)
            except SpoolError as exc:
                self.notes.append(f"no durable spool ({exc}); measurements are kept in memory until MLflow has them")
                spool = None
            self._writer = Writer(spool, render_chart=self._render_chart, timeout_s=self.config.mlflow_timeout_s,
                                  slow_s=self.config.mlflow_slow_s)
        return self._writer

    def writer_status(self):
        """The writer's :class:`~ipython_energy.writer.WriterStatus`, or None while no writer has started
        (asking must not start one)."""
        return None if self._writer is None else self._writer.status()

    def sweep_view(self, sweep):
        """The sweep as the writer last derived it from MLflow, every member's runs included
        (a :class:`~ipython_energy.ledger.Step`), or None (no writer, or nothing derived yet)."""
        if self._writer is None or not sweep.logged:
            return None
        return self._writer.sweep_view(sweep.uid, self.tracking_uri, sweep.experiment or self.config.experiment)

    def start_background(self) -> None:
        """Start the writer (replays dead kernels' spools) without waiting for it."""
        if self.config.log:
            self.writer.start()

    def _new_uid(self) -> str:
        """Unique across kernels (the session id is random) and cheap (no syscall per run)."""
        self._uids += 1
        return f"{self.session}-{self._uids:x}"

    # ---- sweeps ------------------------------------------------------------------------------
    def start_sweep(self, name: str, *, planned: int | None = None, budget_j: float | None = None,
                    stop_at_budget: bool = False, log: bool | None = None, activate: bool = True) -> Sweep:
        """Start sweep ``name``, or make the running one of that name active again, with any new
        ``planned`` / ``budget_j`` (a change MLflow is told of: :meth:`_log_sweep`).

        ``name`` may be the MLflow run id of a sweep's parent run (another process's sweep): this
        process joins that sweep, in that run's experiment (:func:`~ipython_energy.joining.sweep_of_run`;
        the one call here that waits on MLflow, as the answer decides which sweep this is).
        """
        name = check_name(name, "sweep")
        name, experiment = self._sweep_identity(name)
        if planned is not None:
            if isinstance(planned, bool) or not isinstance(planned, int) or planned <= 0 or planned > 10_000_000:
                raise ValueError(f"planned must be a positive whole number of runs, not {quote(planned)}")
        if budget_j is not None:
            if isinstance(budget_j, bool) or not isinstance(budget_j, (int, float)) \
                    or not math.isfinite(budget_j) or budget_j <= 0:
                raise ValueError(f"budget_j must be a positive finite number of joules, not {quote(budget_j)}")
            budget_j = float(budget_j)
        with self._lock:
            sweep = self.sweeps.get(name)
            if sweep is not None and not sweep.ended:
                if planned is not None:
                    sweep.planned = planned
                if budget_j is not None:
                    sweep.budget_j = budget_j
                sweep.stop_at_budget = sweep.stop_at_budget or stop_at_budget
            else:
                sweep = Sweep(self, name, self._new_uid(), planned, budget_j, stop_at_budget, start_ms=_now_ms(),
                              experiment=experiment)
                sweep.ledger = SweepLedger(self.meter, self.meter.mark())
                self.sweeps[name] = sweep
            if activate:
                self._scopes.activate_sweep(sweep)
            self._log_sweep(sweep, self.config.log if log is None else log)
        return sweep

    def _sweep_identity(self, name: str) -> tuple[str, str]:
        """``(name, experiment)`` of the sweep ``name`` names: a sweep's name in the configured
        experiment, or, for the run id of an existing sweep's parent run, that sweep's."""
        if not joining.is_run_id(name) or not self.config.log:
            return name, self.config.experiment
        found = self._sweep_ids.get(name)
        if found is None:
            try:
                found = joining.sweep_of_run(self.tracking_uri, name, timeout_s=min(self.config.mlflow_timeout_s, 10.0))
            except joining.LookupFailed as exc:
                raise EnergyError(f"cannot join the sweep of MLflow run {name} at {self.tracking_uri}: {exc}. "
                                  "A sweep's name joins it without asking MLflow") from None
            if found is None:  # no such run: an identifier a launcher made up, a name like any other
                return name, self.config.experiment
            self._sweep_ids[name] = found
        return found

    def _joined_sweep(self) -> Sweep | None:
        """The sweep of the ``sweep`` setting (``IPYTHON_ENERGY_SWEEP``) for a run started outside
        any other sweep: joined at the first such run, left when the tracker closes."""
        name = self.config.sweep
        if not name:
            return None
        with self._lock:
            if self._join_error is not None:
                return None
            if self._joined is None or self._joined.ended:
                try:
                    self._joined = self.start_sweep(name, activate=False)
                except EnergyError as exc:  # the run id could not be looked up: measure, outside it
                    self._join_error = str(exc)
                    warnings.warn(f"ipython-energy: the sweep setting is ignored: {exc}", RuntimeWarning, 2)
                    return None
            return self._joined

    def _log_sweep(self, sweep: Sweep, start: bool) -> None:
        """Tell MLflow what it does not know yet of ``sweep`` (the tracker's lock is held).

        A sweep first started without logging (``%%energy --sweep q --no-log``) reaches MLflow when
        ``start`` is set (a logged start, or its first logged run needs its parent run), with its
        start time and its plan as they are now.  Once MLflow has it, a change of ``planned`` or
        ``budget_j`` is sent as a :class:`~ipython_energy.events.SweepUpdate`, whatever ``start`` says.
        """
        if not sweep.logged:
            if start:
                sweep.logged, sweep.logged_plan = True, sweep.plan
                self._submit(events.SweepStart(sweep.uid, sweep.name, sweep.start_ms, self.tracking_uri,
                                               sweep.experiment or self.config.experiment, session=self.session,
                                               planned=sweep.planned, budget_j=sweep.budget_j))
        elif sweep.logged_plan != sweep.plan:
            sweep.logged_plan = sweep.plan
            self._submit(events.SweepUpdate(sweep.uid, _now_ms(), planned=sweep.planned, budget_j=sweep.budget_j))

    def end_sweep(self, sweep: Sweep | None = None, status: str = "FINISHED") -> Sweep | None:
        with self._lock:
            sweep = sweep or self.sweep
            if sweep is None or sweep.ended:
                return sweep
            if self.run is not None and self.run.sweep is sweep:
                self.end_run(self.run, status)
            sweep.ended = True
            self._scopes.leave_sweep(sweep)
            between = sweep.ledger.leave() if sweep.ledger is not None else None
            if between is not None:
                sweep.left(between)
        if sweep.logged:  # a sweep none of whose runs was logged never reached MLflow
            self._submit(events.SweepEnd(sweep.uid, status, _now_ms(), between_j=between))
        return sweep

    # ---- runs -------------------------------------------------------------------------------
    def start_run(self, name: str | None = None, params: Mapping[str, Any] | None = None, *,
                  sweep: Sweep | None = None, activate: bool = False, implicit: bool = False,
                  log: bool | None = None, cell: bool = False, label: str | None = None,
                  tags: Mapping[str, str] | None = None, group_uid: str | None = None) -> Run:
        """Start a run (in ``sweep``, else the active sweep, else the sweep of the ``sweep`` setting).

        ``tags`` go to MLflow with the run's start; ``group_uid``: the run is a repeat of that
        group (:meth:`start_group`), its MLflow child unless it is a run of a sweep or nested.

        A run opened while another run this thread opened is open in this context is *nested* in
        the innermost one (docs/metrics.md, "Nested runs"): its energy is already in the enclosing
        run's, so it is a child of that run in MLflow, not of the sweep, and the sweep's totals
        leave it out.  It is logged only when the enclosing run is.  ``activate`` ends the active run first (runs
        started one after another are siblings), and a real run opened inside a cell that was
        going to be its own run takes that run's place (``discarded``) rather than nesting in it.
        """
        params = check_params(params)
        if name is not None:
            name = check_name(name, "run")
        with self._lock:
            sweep = self._sweep_for(sweep)
            if sweep is not None and sweep.stop_at_budget and sweep.over_budget:
                raise BudgetExceeded(
                    f"sweep {sweep.name!r} has used {format_energy(sweep.total_j)} of its "
                    f"{format_energy(sweep.budget_j)} budget; no further runs are started. "
                    f"Raise the budget with %energy sweep {sweep.name} --budget …, or end the sweep.")
            if not implicit:
                # A real run opened inside a cell that was going to be its own run takes its place.
                for run in self.open_runs:
                    if run.implicit and not run.discarded:
                        run.discarded = True
                        if run.sweep is not None and run.sweep.ledger is not None:
                            run.sweep.ledger.drop(run)
            if activate and self.run is not None and self.run.measurement is None:
                self.end_run(self.run)
            # Nested: inside a run this thread opened in this context.  Runs of other threads (a
            # thread pool, an Optuna n_jobs search) and of sibling asyncio tasks overlap; the sweep
            # counts the machine once.
            thread = threading.current_thread()
            parent = self._scopes.parent()
            self.run_counter += 1
            if name is None:
                name = ", ".join(f"{k}={v}" for k, v in params.items()) or f"run {self.run_counter}"
            window = self.meter.begin(label or name, cell=cell)
            run = Run(self, name, self._new_uid(), params, sweep, window, implicit=implicit, parent=parent,
                      thread=thread)
            run.logged = (self.config.log if log is None else log) and (parent is None or parent.logged)
            self.open_runs.append(run)
            self._scopes.opened(run, activate)
            if sweep is not None and parent is None and sweep.ledger is not None:
                sweep.ledger.enter(run)
            if run.logged:
                # Start temperatures, like every other provenance tag, come with the run's end.
                tags = {**(tags or {}), "energy.session": self.session,
                        "energy.interval_s": f"{self.meter.interval_s:g}",
                        "energy.pid": str(os.getpid()), "energy.thread": thread.name}
                if parent is not None:
                    tags["energy.parent_run"] = parent.name
                    if sweep is not None:
                        tags["energy.sweep"] = sweep.name
                elif sweep is not None:
                    self._log_sweep(sweep, True)  # its parent run, if MLflow does not have it yet
                experiment = (sweep.experiment if sweep is not None else None) or self.config.experiment
                self._submit(events.RunStart(
                    run.uid, name, _now_ms(), self.tracking_uri, experiment,
                    sweep_uid=sweep.uid if sweep is not None and parent is None else None,
                    params=params, tags=tags,
                    parent_uid=parent.uid if parent is not None else group_uid if sweep is None else None))
        return run

    def _sweep_for(self, sweep: Sweep | None) -> Sweep | None:
        """The sweep a new run belongs to: ``sweep``, else the active one, unless it has ended;
        else the one the ``sweep`` setting names (joined now).  The lock is held."""
        sweep = sweep if sweep is not None else self.sweep
        if sweep is not None and sweep.ended:
            sweep = None
        return sweep if sweep is not None else self._joined_sweep()

    # ---- groups of repeats (ipython_energy/repeats.py) -----------------------------------------
    def start_group(self, name: str, *, sweep: Sweep | None = None, tags: Mapping[str, str] | None = None,
                    log: bool | None = None) -> str | None:
        """Start the MLflow parent run of a group of repeats; its uid, or None when it is not logged.

        Its place: under the run this thread has open (the repeats nest in it), else under
        ``sweep`` (the active sweep), whose runs its repeats are but it is not (``kind`` group).
        """
        with self._lock:
            sweep = self._sweep_for(sweep)
            parent = next((r for r in reversed(self._scopes.open_runs())
                           if not r.discarded and not r.implicit), None)
            if not ((self.config.log if log is None else log) and (parent is None or parent.logged)):
                return None
            uid = self._new_uid()
            tags = {**(tags or {}), "energy.session": self.session}
            if parent is None and sweep is not None:
                self._log_sweep(sweep, True)
            if sweep is not None:
                tags["energy.sweep"] = sweep.name
            under = parent.uid if parent is not None else sweep.uid if sweep is not None else None
            experiment = (sweep.experiment if sweep is not None else None) or self.config.experiment
            self._submit(events.RunStart(uid, name, _now_ms(), self.tracking_uri, experiment,
                                         tags=tags, parent_uid=under, kind="group"))
        return uid

    def end_group(self, uid: str, status: str, metrics: Mapping[str, float], tags: Mapping[str, str]) -> None:
        """End a group's parent run with its statistics (through the writer, as every run's end)."""
        t_ms = _now_ms()
        self._submit(events.RunEnd(uid, status, t_ms, events.rows_of(metrics, t_ms), dict(tags)))

    def log_metrics(self, run: Run, metrics: Mapping[str, float]) -> None:
        """Metrics of a running ``run`` at step 0 (a repeat's ``cooldown_s``)."""
        if run.logged and metrics:
            t_ms = _now_ms()
            self._submit(events.Metrics(run.uid, events.rows_of(metrics, t_ms)))

    def end_run(self, run: Run | None = None, status: str = "FINISHED") -> Measurement | None:
        return self._end_run(run, status)[0]

    def begin_cell(self, label: str, *, run_name: str | None = None, sweep_name: str | None = None,
                   params: Mapping[str, Any] | None = None, units: tuple[float, str] | None = None,
                   log: bool = True) -> "CellScope":
        """Open the window of one measured cell and decide which run it belongs to.

        ``run_name`` names the run (a new one unless it is the active run's name); without it the
        cell belongs to the active run, or, with no active run or with ``sweep_name``, is a run of
        its own.  Everything is checked before anything starts: a ValueError (bad name or params,
        params for a run already running) or :class:`BudgetExceeded` leaves nothing started.
        """
        active = self.run if self.run is not None and self.run.measurement is None else None
        if params and active is not None and (run_name is None or run_name == active.name):
            raise ValueError(f"--param sets the parameters of a new run, but run {quote(active.name)} is already "
                             f"running; end it with %energy end, or give --run NEWNAME")
        params = check_params(params)
        sweep = self.start_sweep(sweep_name, log=log) if sweep_name else None
        if active is not None and (run_name == active.name or (run_name is None and sweep is None)):
            run, owns_run = active, False
        else:
            run = self.start_run(run_name, params, sweep=sweep, implicit=run_name is None, log=log,
                                 cell=True, label=label)
            owns_run = True
        if units is not None:
            run.add_units(*units)
        # A run made for this cell alone measures exactly the cell: one window serves both.
        window = run.window if owns_run else self.meter.begin(label, cell=True)
        return CellScope(self, run, window, owns_run, log)

    def end_cell_run(self, run: Run, status: str, execution_count: int | None) -> Measurement:
        """End ``run``, a run made for one cell, and log that cell's metrics: what :meth:`end_run`
        then :meth:`log_cell` do, with the cell's rows in the run's final event where they can go
        there (one event fewer to journal and one MLflow batch fewer per cell)."""
        step = execution_count if execution_count is not None else run.cells + 1
        m, with_cell = self._end_run(run, status, cell_step=step)
        if with_cell:
            run.cells += 1
        else:  # not logged, superseded or ended already: exactly what log_cell does
            self.log_cell(run, m, execution_count)
        return m

    def _end_run(self, run: Run | None, status: str,
                 cell_step: int | None = None) -> tuple[Measurement | None, bool]:
        """End ``run``; with ``cell_step``, the final event also carries the per-cell metrics at that
        step when the run is logged.  Returns the measurement and whether the cell's rows went with it."""
        with self._lock:
            run = run or self.run
            if run is None:
                return None, False
            if run.measurement is not None:
                return run.measurement, False
            m = run.window.end()
            # the run's measurement carries its stages, for its summary line and HTML repr
            run.measurement = dataclasses.replace(m, stages=dict(run.stages)) if run.stages else m
            run.status = status
            if run in self.open_runs:
                self.open_runs.remove(run)
            self._scopes.ended(run)
            part, part_tags = {}, {}
            if run.sweep is not None and run.parent is None and run.sweep.ledger is not None:
                part, part_tags = run.sweep.ledger.close(run)
            if run.sweep is not None and run.parent is None and not run.discarded:
                # the sweep keeps its figures, not the run
                run.sweep.finished(run, part or None, shared=bool(part_tags))
        m = run.measurement
        if not run.logged:
            return m, False
        if run.discarded:
            self._submit(events.RunEnd(run.uid, "KILLED", _now_ms(), tags={"energy.superseded": "true"},
                                       delete=True))
            return m, False
        with_cell = cell_step is not None and self.config.log
        # The rows are derived on the writer's journal thread, off the cell's path.
        self._submit(events.RunEndDraft(run.uid, status, _now_ms(), m, dict(run.units), dict(run.stages),
                                        self.meter.idle_source, cell_step if with_cell else None,
                                        part, part_tags, dict(run.extra_params), dict(run.extra_tags),
                                        dict(run.extra_metrics)))
        return m, with_cell

    def log_cell(self, run: Run, m: Measurement, execution_count: int | None) -> None:
        """Per-cell metrics of ``run`` at step = execution count."""
        run.cells += 1
        if run.logged and self.config.log:
            step = execution_count if execution_count is not None else run.cells
            self._submit(events.CellMetricsDraft(run.uid, m, step, _now_ms()))

    # ---- stages -------------------------------------------------------------------------------
    def stage(self, name: str) -> Stage:
        name = check_name(name, "stage")
        with self._lock:
            runs = self._scopes.open_runs()
            run = runs[-1] if runs else None
            return Stage(self, name, run, self.meter.begin(f"stage {name}"))

    # ---- live --------------------------------------------------------------------------------
    def _start_live(self) -> None:
        self._live_thread = threading.Thread(target=self._live_loop, name="ipython-energy-live", daemon=True)
        self._live_thread.start()

    def _live_loop(self) -> None:
        last_flush = time.monotonic()
        while not self._stop_live.wait(1.0):
            try:
                self.write_live_file()
            except OSError:
                pass
            now = time.monotonic()
            if now - last_flush >= self.config.live_interval_s:
                last_flush = now
                self.flush_live()

    def flush_live(self) -> None:
        """Log the running energy of each open run (``live_energy_j``/``live_power_w``)."""
        with self._lock:
            runs = [r for r in self.open_runs if r.logged and not r.discarded]
        for run in runs:
            snap = run.window.snapshot()
            step = int(snap.duration_s)
            power = sum(self.meter.power_now().values())
            t_ms = _now_ms()
            self._submit(events.Metrics(run.uid, (("live_energy_j", snap.energy_j, step, t_ms),
                                                  ("live_power_w", power, step, t_ms))))

    def live_state(self) -> dict[str, Any]:
        power = self.meter.power_now()
        session = self.meter.session()
        run = self.open_runs[-1] if self.open_runs else None  # the live thread has no run of its own
        sweep = self.sweep or (self._joined if self._joined is not None and not self._joined.ended else None)
        return {
            "session": self.session, "pid": os.getpid(), "updated_at": time.time(),
            "power_w": sum(power.values()), "domains": power,
            "methods": {d.name: d.method for d in self.meter.domains},
            "estimated": any(d.estimated for d in self.meter.domains),
            "tracking_uri": self.tracking_uri, "experiment": self.config.experiment,
            **registry.session_figures(session),
            "active_run": None if run is None else {"name": run.name, "uid": run.uid, "energy_j": run.energy_j},
            "active_sweep": None if sweep is None else {
                "name": sweep.name, "uid": sweep.uid, "total_j": sweep.total_j,
                "runs": sweep.finished_runs, "unlogged_j": sweep.unlogged_j,
                "unlogged_runs": sweep.unlogged_runs},
        }

    def write_live_file(self) -> None:
        registry.write_live(self.session, self.live_state())

    # ---- registration, flush, close --------------------------------------------------------
    def _register(self) -> None:
        try:
            registry.register_kernel(registry.KernelRecord(
                session=self.session, pid=os.getpid(), tracking_uri=self.tracking_uri,
                experiment_name=self.config.experiment, cwd=self.cwd, started_at=time.time()))
            self._registered = True
        except OSError as exc:
            self.notes.append(f"could not register with the sidebar ({exc})")

    def _submit(self, event: events.Event | events.Draft) -> None:
        self.writer.submit(event)

    def flush(self, timeout_s: float = 30.0) -> bool:
        if self._writer is None:
            return True
        return self._writer.flush(timeout_s)

    def backend_warning(self) -> str | None:
        """A line for each condition that began or ended since the last call; None when none did.

        Two conditions, reported independently, each once when it begins and once when it ends:
        the local spool cannot be written, and MLflow's state (``ok``, ``slow``, ``not answering``:
        :class:`~ipython_energy.writer.WriterStatus`).  A line names the URI that failed.
        """
        reported = self._reported
        if self._writer is None or (reported["spool"] == reported["mlflow"] == "ok" and self._writer.healthy()):
            return None
        status = self._writer.status()
        lines = []
        spool = "ok" if status.spool_ok else "failing"
        if spool != reported["spool"]:
            reported["spool"] = spool
            lines.append("ipython-energy: the local spool can be written again." if spool == "ok" else
                         f"ipython-energy: cannot write the local spool ({status.spool_error}); measurements are "
                         "held in memory until MLflow takes them. Your cells are not affected.")
        mlflow = status.state
        before, reported["mlflow"] = reported["mlflow"], mlflow
        uri = status.backend_uri or self.tracking_uri
        if mlflow == before:
            pass
        elif mlflow == "not answering":
            kept = "kept in the local spool" if status.spool_ok else "held in memory"
            lines.append(f"ipython-energy: MLflow at {uri} is not answering ({status.last_error}); measurements are "
                         f"{kept} and will be written when it answers. Your cells are not affected.")
        elif before == "not answering":
            slowly = f", slowly ({status.slow_detail})" if mlflow == "slow" else ""
            lines.append(f"ipython-energy: MLflow is answering again at {uri}{slowly}; spooled measurements are "
                         "being written.")
        elif mlflow == "slow":
            lines.append(f"ipython-energy: MLflow at {uri} is slow ({status.slow_detail}); measurements are written "
                         "in the background as it answers. Your cells are not affected.")
        else:
            lines.append(f"ipython-energy: MLflow at {uri} is answering promptly again.")
        return "\n".join(lines) or None

    def _at_exit(self) -> None:
        """The process exits: a worker's last runs and its leaving the sweep should reach MLflow
        (the last member to leave closes the sweep), so the writer is waited for while MLflow
        answers, up to ``mlflow_timeout_s``; once it is reported as not answering (about 2 s),
        what is left stays in the spool for the next process on this host."""
        self.close(patient=True)

    def close(self, timeout_s: float = 5.0, *, patient: bool = False) -> None:
        """End open runs and sweeps (as KILLED for runs the user never closed), flush, stop threads.

        ``patient``: wait beyond ``timeout_s`` as long as MLflow answers (see :meth:`_at_exit`).
        """
        with self._lock:
            for run in list(self.open_runs):
                self.end_run(run, "KILLED")
            for sweep in list(self.sweeps.values()):
                if not sweep.ended:
                    self.end_sweep(sweep)
        if patient and self._writer is not None:
            deadline = time.monotonic() + self.config.mlflow_timeout_s
            while not self._writer.flush(1.0) and time.monotonic() < deadline \
                    and self._writer.status().backend_ok:
                pass
        self._stop_live.set()
        if self._writer is not None:
            self._writer.close(timeout_s)
        self.meter.stop()
        if self._registered:
            registry.unregister(self.session)
            self._registered = False
        try:
            atexit.unregister(self._at_exit)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
