"""Windows over the sampler: begin/end snapshots of cumulative energy, turned into a frozen Measurement.

A window's energy per domain is the difference of the domain's cumulative energy
at its two edges.  Each edge reads every healthy sensor (so the edge is "now", not
the last sample; blocking sensors through their reader threads, given a few
milliseconds at most, after which the edge uses the buffer and the domain gets a
gap), and the sampler's series turns those reads
into cumulative energy at the exact edge time: counters are differenced (with
their update times estimated when they update slowly), polled power is
integrated with trapezoids (shifted back by half its averaging width).  A
window's begin edge is refined once later samples bracket it.

Windows nest and overlap freely, from any thread; each keeps only a handful of
running aggregates, so a window left open for a week costs no more memory than
one open for a second.  Nothing here writes files or logs anywhere.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from .measurement import DomainProvenance, Gap, Measurement
from .sampler import DEFAULT_IDLE_INTERVAL_S, Sampler
from .sensors.base import DomainInfo, Sensor
from .edges import Snapshot
from .series import DEFAULT_LOW_UTIL

#: Quiet time (no window open) over which the idle baseline is measured.
IDLE_MEASURE_S = 2.0
#: Most gaps listed per domain in one Measurement (all of them count towards coverage).
MAX_GAPS_LISTED = 50
#: The three parts of the session (see :meth:`Meter.session`), in the order of ``Meter._part_j``.
IN_RUNS, OTHER_CELLS, IDLE = 0, 1, 2
SESSION_PARTS = ("in_runs", "other_cells", "idle")
#: A session edge still extrapolated after this many seconds is counted as it is (a domain that
#: never reads would otherwise keep every later edge waiting).
SESSION_SETTLE_S = 30.0
#: Unfolded session edges kept before a window edge folds them itself (session() folds them
#: otherwise: the tracker's live thread, every second).
FOLD_AT = 4096
#: Cell marks (:meth:`Meter.cell_began`/``cell_ended``) queued before a hook turns them into edges
#: itself (the next window edge or session() does otherwise).
CELL_MARKS_QUEUED = 4096


class Window:
    """An open measurement window.  Create with :meth:`Meter.begin`."""

    def __init__(self, meter: "Meter", label: str, cell: bool, edge: Snapshot, started_at: float, state):
        self.label = label
        self.cell = cell
        self._meter = meter
        self._begin = edge
        self.started_at = started_at
        self._state = state
        self.peak_w = edge.power_w
        self._result: Measurement | None = None
        self._end_t: float | None = None
        #: The snapshot taken when the window ended (None while open): a boundary others may share.
        self.end_edge: Snapshot | None = None
        self._lock = threading.Lock()

    @property
    def begin_edge(self) -> Snapshot:
        """The snapshot taken when the window began."""
        return self._begin

    @property
    def begin_s(self) -> float:
        """Window start on the meter's monotonic clock."""
        return self._begin.t

    @property
    def end_s(self) -> float | None:
        """Window end on the meter's monotonic clock (None while open)."""
        return self._end_t

    @property
    def elapsed_s(self) -> float:
        end = self._end_t if self._end_t is not None else self._meter.clock()
        return end - self._begin.t

    @property
    def closed(self) -> bool:
        return self._result is not None

    def end(self) -> Measurement:
        """Close the window and return its frozen Measurement.  A second call returns the same object."""
        with self._lock:
            if self._result is not None:
                return self._result
            self._result = self._meter._end(self)
            return self._result

    def snapshot(self) -> Measurement:
        """The Measurement so far (``running=True``); the window stays open."""
        if self._result is not None:
            return self._result
        return self._meter._snapshot(self)

    def __enter__(self) -> "Window":
        return self

    def __exit__(self, *exc) -> None:
        self.end()


class Meter:
    """Measures energy windows over a set of sensors.

    Args:
        sensors: From :func:`ipython_energy.sensors.discover` (``.sensors``).
        interval_s: Sampler interval (10 Hz default).
        idle_power_w: Configured idle baseline in watts (total over all domains); ``None``
            measures it in the background during the first ~2 s of quiet after :meth:`start`.
        pue: Power usage effectiveness, passed through to every Measurement.
        carbon_g_per_kwh: Grid carbon intensity, passed through to every Measurement.
        clock: Monotonic clock (seconds); the only clock used for energy.
        notes: Discovery notes to surface (permission problems…).
        buffer_s: Seconds of samples kept per domain.
        hang_timeout_s: A sensor read in flight longer than this becomes a ``hung`` gap.
        idle_measure_s: Quiet seconds over which the idle baseline is measured.
        background: False: no sampler thread; ticks are taken with ``meter.sampler.tick()`` on an
            injected ``clock`` (tests, simulations; see :class:`~ipython_energy.sampler.Sampler`).
        low_util: Busy fraction (0-1) below which energy counts as spent at low utilisation
            (``Measurement.domains_low_util_j``), for domains whose sensor reports utilisation.
        idle_interval_s: How often a costly counter (a sensor that declares ``slow_when_idle``:
            NVML's) is read while no window is open, no snapshot waits to be refined and the idle
            baseline is not being measured; every ``interval_s`` otherwise (see
            :class:`~ipython_energy.sampler.Sampler`).  None reads it at every tick always.
    """

    def __init__(
        self,
        sensors: list[Sensor],
        *,
        interval_s: float = 0.1,
        idle_power_w: float | None = None,
        pue: float | None = None,
        carbon_g_per_kwh: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        notes: list[str] | None = None,
        buffer_s: float = 600.0,
        hang_timeout_s: float | None = None,
        idle_measure_s: float = IDLE_MEASURE_S,
        background: bool = True,
        low_util: float = DEFAULT_LOW_UTIL,
        idle_interval_s: float | None = DEFAULT_IDLE_INTERVAL_S,
    ):
        self.clock = clock
        self.low_util = low_util
        self.sampler = Sampler(
            sensors, interval_s=interval_s, clock=clock, buffer_s=buffer_s, hang_timeout_s=hang_timeout_s,
            background=background, low_util=low_util, idle_interval_s=idle_interval_s,
        )
        self._sensors = list(sensors)
        self._lock = self.sampler.lock
        self._notes = list(notes or [])
        self.pue = pue
        self.carbon_g_per_kwh = carbon_g_per_kwh
        self._configured_idle_w = idle_power_w
        self.idle_measure_s = idle_measure_s
        self._series = self.sampler.series
        # What the sampler works out at every tick (under the store lock): the peak power while a
        # window is open, the refinement of begin edges, and the quiet-time energy for the idle
        # baseline while none is open and none is configured.
        self._tally = self.sampler.tally
        if idle_power_w is None:
            self._tally.quiet_target_s = idle_measure_s
        self._open: set[Window] = set()
        # The session's three parts.  The state is a function of two counts: windows open (any
        # run, measured cell or stage: "in runs") and cells executing (IPython's pre/post_run_cell,
        # :meth:`cell_began`/:meth:`cell_ended`, which only queue the time in ``_cell_marks``; the
        # queue is applied, in time order, at the next window edge or session()).  Each change of
        # state appends its edge to ``_chain``; a pair of settled edges is folded into
        # ``_part_j``/``_part_s``.  The parts are differences of cumulative energy along one chain
        # of edges, so they add up to the total exactly, and overlapping windows (threads, a run
        # over several cells) count once.
        self._cell_marks: deque[tuple[float, int]] = deque()
        self._executing = 0
        self._state = IDLE
        self._chain: deque[tuple[Snapshot, int]] = deque()
        self._part_j = [0.0, 0.0, 0.0]
        self._part_s = [0.0, 0.0, 0.0]
        self._start_edge: Snapshot | None = None
        self._started = False
        self._start_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start sampling (and the idle measurement).  Idempotent."""
        with self._start_lock:
            if self.sampler.running:
                return
            self.sampler.start()
            if self._start_edge is None:
                t = self.clock()
                self.sampler.edge_read()
                with self._lock:
                    self._start_edge = self._make_edge(t)
                    self._apply_cell_marks(t)  # counts only: no edge before the start
                    self._state = self._state_now()
                    self._chain.append((self._start_edge, self._state))
            self._started = True

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop the sampler thread; returns within about ``timeout_s``.  Idempotent.

        Windows may still be ended afterwards: their edges read the sensors directly.
        """
        self.sampler.stop(timeout_s)

    def close(self) -> None:
        """Stop and release the sensors."""
        self.stop()
        for s in self._sensors:
            s.close()

    # -- properties -------------------------------------------------------------------------
    @property
    def domains(self) -> list[DomainInfo]:
        return self.sampler.domains

    @property
    def interval_s(self) -> float:
        return self.sampler.interval_s

    @property
    def started_s(self) -> float | None:
        """When :meth:`start` first took its edge, on the meter's clock (None before): the origin
        of :meth:`session`."""
        return self._start_edge.t if self._start_edge is not None else None

    @property
    def open_windows(self) -> int:
        """How many windows are open now."""
        return len(self._open)

    @property
    def edges_pending(self) -> int:
        """How many begin edges still wait for later samples to refine them (0 once all are final)."""
        with self._lock:
            return len(self._tally.pending)

    @property
    def notes(self) -> list[str]:
        return list(self._notes)

    @property
    def idle_power_w(self) -> float | None:
        """The idle baseline in watts (total over all domains): configured, measured, or None."""
        if self._configured_idle_w is not None:
            return self._configured_idle_w
        return self._tally.quiet_power_w

    @property
    def idle_source(self) -> str:
        """``configured``, ``measured``, or ``none`` (not known yet)."""
        if self._configured_idle_w is not None:
            return "configured"
        return "measured" if self._tally.quiet_power_w is not None else "none"

    # -- windows ----------------------------------------------------------------------------
    def begin(self, label: str, *, cell: bool = False) -> Window:
        """Open a window now.  Reads the sensors (see :meth:`Sampler.edge_read`); cheap (tens of microseconds)."""
        if not self._started:
            self.start()
        t = self.clock()
        self.sampler.edge_read()
        started_at = time.time()  # display only; energy uses the monotonic clock
        state = self.sampler.states()
        with self._lock:
            edge = self._make_edge(t)
            self._apply_cell_marks(t)  # the cells' marks before this edge, with the windows as they were
            self._fold_peaks()
            w = Window(self, label, cell, edge, started_at, state)
            self._open.add(w)
            tally = self._tally
            tally.watch_peak = True
            if edge.pending:
                tally.pending.append(edge)
            tally.interrupt()
            if len(self._open) == 1:
                self._session_edge(edge)
        return w

    def power_now(self) -> dict[str, float]:
        """Latest power per domain in watts (domains without a reading yet are left out)."""
        out: dict[str, float] = {}
        with self._lock:
            self.sampler.sync()
            for name, s in self._series.items():
                p = s.power_now_w()
                if p is not None:
                    out[name] = p
        return out

    def cell_began(self) -> None:
        """A cell started executing (IPython's ``pre_run_cell``).  O(1) and lock-free: the time is
        queued; the edge (a mark of the series at that time, no sensor read) is taken later, off the
        cell's path, by the next window edge or :meth:`session`.  Where a costly counter is read only
        every few seconds between windows, a read of it is started (not waited for) so that the mark
        lies between two reads (:meth:`Sampler.read_soon`)."""
        self._cell_marks.append((self.clock(), 1))
        self.sampler.read_soon()
        if len(self._cell_marks) > CELL_MARKS_QUEUED:
            self._apply_cell_marks_now()

    def cell_ended(self) -> None:
        """A cell finished (IPython's ``post_run_cell``); an unmatched call is ignored."""
        self._cell_marks.append((self.clock(), -1))
        self.sampler.read_soon()
        if len(self._cell_marks) > CELL_MARKS_QUEUED:
            self._apply_cell_marks_now()

    def _apply_cell_marks_now(self) -> None:
        with self._lock:
            self.sampler.sync()
            self._apply_cell_marks(self.clock())

    def mark(self) -> Snapshot:
        """A snapshot of every domain now, for :meth:`energy_between` (a sweep's boundaries)."""
        if not self._started:
            self.start()
        t = self.clock()
        self.sampler.edge_read()
        with self._lock:
            edge = self._make_edge(t)
            if edge.pending:
                self._tally.pending.append(edge)
        return edge

    def energy_between(self, a: Snapshot, b: Snapshot) -> float:
        """Energy in joules, all domains, from snapshot ``a`` to ``b`` (window edges or :meth:`mark`).

        Plain differences of the cumulative energy, so that stretches laid end to end add up
        exactly to the stretch they make.
        """
        with self._lock:
            a.refine(self._series)
            b.refine(self._series)
            return self._delta(a, b, self._series)

    def session(self) -> dict:
        """The session's energy since :meth:`start`, in three parts that add up to the total.

        * ``in_runs``: inside the union of all windows (runs, measured cells, stages; a time
          covered by several windows counts once);
        * ``other_cells``: cells executing (:meth:`cell_began` .. :meth:`cell_ended`) outside
          every window;
        * ``idle``: the rest (the kernel waiting for input; in a script, the time outside runs).

        Keys: ``duration_s``, ``total_j`` and, for each part, ``<part>_j`` and ``<part>_s``.
        """
        out = {"duration_s": 0.0, "total_j": 0.0}
        if self._start_edge is None:
            for part in SESSION_PARTS:
                out[f"{part}_j"] = out[f"{part}_s"] = 0.0
            return out
        now = self.clock()
        with self._lock:
            edge = self._make_edge(now)
            self._apply_cell_marks(now)
            self._fold(now)
            part_j, part_s = list(self._part_j), list(self._part_s)
            chain = self._chain
            series = self._series
            for (a, state), (b, _) in zip(chain, list(chain)[1:] + [(edge, None)]):
                part_j[state] += self._delta(a, b, series)
                part_s[state] += b.t - a.t
        out["duration_s"] = now - self._start_edge.t
        out["total_j"] = sum(part_j)
        for i, part in enumerate(SESSION_PARTS):
            out[f"{part}_j"] = part_j[i]
            out[f"{part}_s"] = part_s[i]
        return out

    # -- internals --------------------------------------------------------------------------
    def _make_edge(self, t: float) -> Snapshot:
        """Snapshot every domain at ``t``.  Caller holds the store lock."""
        self.sampler.sync()
        return Snapshot(t, self._series)

    def _state_now(self) -> int:
        return IN_RUNS if self._open else OTHER_CELLS if self._executing else IDLE

    def _apply_cell_marks(self, upto: float) -> None:
        """Apply the queued cell marks taken up to ``upto``, in order, each change of state with an
        edge at the mark's time (never before the last edge).  Caller holds the store lock, after
        :meth:`Sampler.sync`."""
        marks = self._cell_marks
        while marks and marks[0][0] <= upto:
            t, step = marks.popleft()
            executing = self._executing + step
            if executing < 0:  # a post_run_cell without its pre_run_cell (the cell that loaded us)
                continue
            self._executing = executing
            if self._chain and (executing == 0 or executing == 1) and not self._open:
                self._session_edge(Snapshot(max(t, self._chain[-1][0].t), self._series))

    def _session_edge(self, edge: Snapshot) -> None:
        """The windows open or the cells executing changed: start a new stretch of the session at
        ``edge`` if its state changed.  Caller holds the store lock."""
        if not self._chain:  # not started yet: start() takes the first edge
            return
        state = self._state_now()
        if state == self._state:
            return
        self._state = state
        self._chain.append((edge, state))
        if len(self._chain) > FOLD_AT:  # session() folds otherwise, off the cells' path
            self._fold(edge.t)

    def _fold(self, now: float) -> None:
        """Add each stretch whose two edges are settled (refined, or older than
        :data:`SESSION_SETTLE_S`) to its part.  Caller holds the store lock."""
        chain, series = self._chain, self._series
        while len(chain) >= 2:
            a, state = chain[0]
            b = chain[1][0]
            if a.pending:
                a.refine(series)
            if b.pending:
                b.refine(series)
            if (a.pending or b.pending) and now - b.t < SESSION_SETTLE_S:
                break
            self._part_j[state] += self._delta(a, b, series)
            self._part_s[state] += b.t - a.t
            chain.popleft()

    @staticmethod
    def _delta(a: Snapshot, b: Snapshot, series) -> float:
        """Cumulative energy from ``a`` to ``b``, all domains: plain differences, so that stretches
        laid end to end add up (a domain first read after ``a`` counts from its first point)."""
        total = 0.0
        for name, mb in b.marks.items():
            eb = mb.energy_j
            if eb is None:
                continue
            ea = a.marks[name].energy_j
            if ea is None:
                points = series[name].points
                ea = points[0][1] if points else eb
            total += eb - ea
        return total

    def _measure(self, w: Window, end: Snapshot, running: bool) -> Measurement:
        """Build the Measurement for ``w`` up to ``end``.  Caller holds the lock."""
        b = w._begin
        b.refine(self._series)
        duration = max(0.0, end.t - b.t)
        interval = self.sampler.interval_s
        domains: dict[str, float] = {}
        low_j: dict[str, float] = {}
        low_s: dict[str, float] = {}
        prov: dict[str, DomainProvenance] = {}
        for name, s in self._series.items():
            info = s.info
            bm = b.marks[name]
            em = end.marks[name]
            energy, short, known = s.energy_between(bm, em)
            if em.low_j is not None and known:
                low = s.low_util_between(bm, em, energy, short)
                if low is not None:
                    low_j[name], low_s[name] = low
            gaps, gap_total = s.gaps_between(b.t, end.t, bm.gap_seq)
            if not known:
                gaps = [(b.t, end.t, "no readings")]
                gap_total = duration
            coverage = 1.0 if duration <= 0 else max(0.0, min(1.0, 1.0 - gap_total / duration))
            if duration <= 0 and s.in_gap:
                coverage = 0.0
            listed = [Gap(gs - b.t, ge - b.t, r) for gs, ge, r in gaps[:MAX_GAPS_LISTED]]
            if len(gaps) > MAX_GAPS_LISTED:
                listed.append(Gap(0.0, 0.0, f"{len(gaps) - MAX_GAPS_LISTED} more gaps not listed"))
            domains[name] = energy
            prov[name] = DomainProvenance(
                method=info.method,
                sensor=info.sensor,
                interval_s=interval,
                update_period_s=info.update_period_s,
                coverage=coverage,
                gaps=tuple(listed),
                short_window=short,
                details=s.provenance_details(),
            )
        energy_j = sum(domains.values())
        idle_w = self.idle_power_w
        idle_j = idle_w * duration if idle_w is not None else 0.0
        peak = max(w.peak_w, end.power_w)
        return Measurement(
            label=w.label,
            energy_j=energy_j,
            duration_s=duration,
            power_mean_w=energy_j / duration if duration > 0 else 0.0,
            power_peak_w=peak,
            domains=domains,
            idle_j=idle_j,
            net_j=max(0.0, energy_j - idle_j),
            provenance=prov,
            started_at=w.started_at,
            state={k: dict(v) for k, v in w._state.items()},
            pue=self.pue,
            carbon_g_per_kwh=self.carbon_g_per_kwh,
            running=running,
            domains_low_util_j=low_j,
            domains_low_util_s=low_s,
            low_util_threshold=self.low_util if low_j else None,
        )

    def _end(self, w: Window) -> Measurement:
        t = self.clock()
        self.sampler.edge_read()
        with self._lock:
            end = self._make_edge(t)
            self._apply_cell_marks(t)
            self._fold_peaks()
            w._end_t = t
            w.end_edge = end
            m = self._measure(w, end, running=False)
            self._open.discard(w)
            tally = self._tally
            tally.watch_peak = bool(self._open)
            try:
                tally.pending.remove(w._begin)
            except ValueError:
                pass
            tally.interrupt()
            if not self._open:
                self._session_edge(end)
        return m

    def _snapshot(self, w: Window) -> Measurement:
        t = self.clock()
        with self._lock:
            end = self._make_edge(t)
            w.peak_w = max(w.peak_w, end.power_w, self._tally.peak_w)
            return self._measure(w, end, running=True)

    def _fold_peaks(self) -> None:
        """Hand the peak seen by the ticks since the last begin/end to the windows open over that
        stretch (the set of open windows only changes at a begin or an end).  Caller holds the lock."""
        tally = self._tally
        p = tally.peak_w
        if p > 0.0:
            for w in self._open:
                if p > w.peak_w:
                    w.peak_w = p
        tally.peak_w = 0.0
