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

import math
import threading
import time
from typing import Callable, Iterable

from .measurement import DomainProvenance, Gap, Measurement
from .sampler import Sampler
from .sensors.base import DomainInfo, Sensor

#: Quiet time (no window open) over which the idle baseline is measured.
IDLE_MEASURE_S = 2.0
#: A window shorter than its counter's update period, on a domain with no gap in it, gets at
#: least this fraction of the domain's recent mean power times its duration (see
#: :meth:`Meter._short_floor_j`): never a near-0 J where the counter kept counting.
SHORT_WINDOW_FLOOR = 0.25
#: "Recent" for that floor: the mean power over at least this many update periods.
SHORT_FLOOR_SPAN_UPDATES = 3
#: Most gaps listed per domain in one Measurement (all of them count towards coverage).
MAX_GAPS_LISTED = 50


class _Edge:
    """Cumulative energy of every domain at one instant; refined while not final."""

    __slots__ = ("t", "energy", "final", "counter_j", "gap_seq", "power_w")

    def __init__(self, t: float):
        self.t = t
        self.energy: dict[str, float | None] = {}
        self.final: dict[str, bool] = {}
        self.counter_j: dict[str, float] = {}  # each counter's last good reading (moved or not?)
        self.gap_seq: dict[str, int] = {}
        self.power_w = 0.0

    @property
    def pending(self) -> bool:
        return not all(self.final.values())


class Window:
    """An open measurement window.  Create with :meth:`Meter.begin`."""

    def __init__(self, meter: "Meter", label: str, cell: bool, edge: _Edge, started_at: float, state):
        self.label = label
        self.cell = cell
        self._meter = meter
        self._begin = edge
        self.started_at = started_at
        self._state = state
        self.peak_w = edge.power_w
        self._result: Measurement | None = None
        self._end_t: float | None = None
        self._lock = threading.Lock()

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
    ):
        self.clock = clock
        self.sampler = Sampler(
            sensors, interval_s=interval_s, clock=clock, buffer_s=buffer_s,
            hang_timeout_s=hang_timeout_s, on_tick=self._on_tick,
        )
        self._sensors = list(sensors)
        self._lock = self.sampler.lock
        self._notes = list(notes or [])
        self.pue = pue
        self.carbon_g_per_kwh = carbon_g_per_kwh
        self._idle_power_w = idle_power_w
        self._idle_source = "configured" if idle_power_w is not None else "none"
        self.idle_measure_s = idle_measure_s
        self._idle_acc_j = 0.0
        self._idle_acc_s = 0.0
        self._idle_prev: tuple[float, float] | None = None
        self._idle_events_seen = -1
        self._open: set[Window] = set()
        self._series = list(self.sampler.series.values())
        self._tick_peak_w = 0.0  # highest total power seen by a tick since the last begin/end
        self._pending: list[_Edge] = []
        self._events = 0  # window begins + ends, for the idle measurement
        self._open_cells = 0
        self._union_begin: _Edge | None = None
        self._cells_j = 0.0
        self._start_edge: _Edge | None = None
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
    def notes(self) -> list[str]:
        return list(self._notes)

    @property
    def idle_power_w(self) -> float | None:
        return self._idle_power_w

    @property
    def idle_source(self) -> str:
        """``configured``, ``measured``, or ``none`` (not known yet)."""
        return self._idle_source

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
            self._fold_peaks()
            w = Window(self, label, cell, edge, started_at, state)
            self._open.add(w)
            if edge.pending:
                self._pending.append(edge)
            self._events += 1
            if cell:
                self._open_cells += 1
                if self._open_cells == 1:
                    self._union_begin = edge
        return w

    def power_now(self) -> dict[str, float]:
        """Latest power per domain in watts (domains without a reading yet are left out)."""
        out: dict[str, float] = {}
        with self._lock:
            self.sampler.sync()
            for name, s in self.sampler.series.items():
                p = s.power_now_w()
                if p is not None:
                    out[name] = p
        return out

    def session(self) -> dict:
        """Energy since :meth:`start`: total, inside cell windows (their union) and between cells."""
        if self._start_edge is None:
            return {"duration_s": 0.0, "total_j": 0.0, "cells_j": 0.0, "between_cells_j": 0.0}
        now = self.clock()
        with self._lock:
            edge = self._make_edge(now)
            total = self._total_between(self._start_edge, edge)
            cells = self._cells_j
            if self._open_cells > 0 and self._union_begin is not None:
                cells += self._total_between(self._union_begin, edge)
        cells = min(cells, total) if total > 0 else cells
        return {
            "duration_s": now - self._start_edge.t,
            "total_j": total,
            "cells_j": cells,
            "between_cells_j": max(0.0, total - cells),
        }

    # -- internals --------------------------------------------------------------------------
    def _make_edge(self, t: float) -> _Edge:
        """Snapshot every domain at ``t``.  Caller holds the store lock."""
        self.sampler.sync()
        edge = _Edge(t)
        total_p = 0.0
        for name, s in self.sampler.series.items():
            e, final = s.energy_at(t)
            edge.energy[name] = e
            edge.final[name] = (final and s.timing_settled) or (e is None and bool(s.points))
            edge.counter_j[name] = s.last_e
            edge.gap_seq[name] = s.gap_seq
            p = s.power_now_w()
            if p is not None:
                total_p += p
        edge.power_w = total_p
        return edge

    def _refine(self, edge: _Edge) -> None:
        """Re-evaluate the domains of ``edge`` that were extrapolated.  Caller holds the lock."""
        for name, final in edge.final.items():
            if final:
                continue
            s = self.sampler.series[name]
            e, fin = s.energy_at(edge.t)
            if e is None:
                if s.points:  # older than the buffer: keep what we had
                    edge.final[name] = True
                continue
            edge.energy[name] = e
            edge.final[name] = fin and s.timing_settled

    def _domain_energy(self, name: str, b: _Edge, e: _Edge) -> tuple[float, bool, bool]:
        """(joules, short_window, known) of one domain between two edges.  Caller holds the lock."""
        s = self.sampler.series[name]
        info = s.info
        duration = e.t - b.t
        eb, ee = b.energy.get(name), e.energy.get(name)
        if eb is None and ee is not None:
            # the domain had no reading at the begin edge: count from its first point
            eb = s.points[0][1] if s.points else None
        if eb is None or ee is None:
            return 0.0, False, False
        short = duration < info.update_period_s
        if s.mode == "polled":
            short = short or duration < info.averaging_s
            return max(0.0, ee - eb), short, True
        moved = e.counter_j.get(name, 0.0) > b.counter_j.get(name, 0.0)
        # a window shorter than one update on a domain with no gap since its begin edge gets at
        # least a fraction of what the recent power says for it (see _short_floor_j)
        floor = (self._short_floor_j(s, duration)
                 if short and s.gap_open is None and s.gap_seq == b.gap_seq.get(name, 0) else 0.0)
        if not moved:
            # the counter did not move: never report 0 J for that, interpolate from recent power
            p = s.unmoved_power_w(e.t)
            if p is None:
                p = s.power_now_w() or 0.0
            return max(max(0.0, p) * self._unmoved_span_s(s, b, e, name), floor), True, True
        energy = max(0.0, ee - eb)
        if energy == 0.0 and duration > 0 and s.gap_open is None:
            # moved, yet no energy between the edges (the edges fell within one update): interpolate
            p = s.unmoved_power_w(e.t) or s.power_now_w() or 0.0
            return max(max(0.0, p) * self._unmoved_span_s(s, b, e, name), floor), True, True
        return max(energy, floor), short, True

    @staticmethod
    def _short_floor_j(s, duration: float) -> float:
        """The least a short window on a healthy counter is given: :data:`SHORT_WINDOW_FLOOR` of the
        domain's recent power times the window's duration.  Recent power: the higher of the mean
        power over the counter's last few updates (:meth:`DomainSeries.mean_power_w`) and the
        sensor's own last power reading, where it gives one (NVML does).

        A window shorter than one update lies within one or two counter steps, and where those
        steps were placed decides its energy.  A step placed a little early or late (an update
        time estimated to a few milliseconds, a read that took milliseconds) can leave both edges
        on a stretch the series shows as flat, and the difference of the edges near 0 J, though
        the counter kept counting.  A real drop in power inside one update, the one thing that
        makes a short window's true energy low, is not visible in a counter that has not updated
        yet, so the floor costs nothing there; it only catches values the counter cannot support.
        A counter that stalls for a few updates (and catches up later) looks like zero power to
        the counter alone; the power reading keeps such a window off 0 J.
        """
        p = max(s.mean_power_w(SHORT_FLOOR_SPAN_UPDATES * s.info.update_period_s) or 0.0, s.last_power_w or 0.0)
        if p <= 0.0 or duration <= 0.0:
            return 0.0
        return SHORT_WINDOW_FLOOR * p * duration

    @staticmethod
    def _unmoved_span_s(s, b: _Edge, e: _Edge, name: str) -> float:
        """How long to interpolate a counter that did not move between the edges.

        The whole window while the domain had no gap in it (a healthy counter in a window shorter
        than its updates: never a silent 0 J).  Otherwise only the time not in a gap, and at most
        one update period of it: a counter that could be read and did not move can hide at most
        one update's worth of energy, and the gap's stretch gets none (its coverage says so).
        """
        duration = e.t - b.t
        since_seq = b.gap_seq.get(name, 0)
        if s.gap_open is None and s.gap_seq == since_seq:
            return duration  # no gap opened or closed since the begin edge
        _, gap_s = s.gaps_between(b.t, e.t, since_seq)
        if gap_s <= 0.0:
            return duration
        return min(max(0.0, duration - gap_s), s.info.update_period_s)

    def _total_between(self, b: _Edge, e: _Edge) -> float:
        self._refine(b)
        return sum(self._domain_energy(name, b, e)[0] for name in self.sampler.series)

    def _measure(self, w: Window, end: _Edge, running: bool) -> Measurement:
        """Build the Measurement for ``w`` up to ``end``.  Caller holds the lock."""
        b = w._begin
        self._refine(b)
        duration = max(0.0, end.t - b.t)
        interval = self.sampler.interval_s
        domains: dict[str, float] = {}
        prov: dict[str, DomainProvenance] = {}
        for name, s in self.sampler.series.items():
            info = s.info
            energy, short, known = self._domain_energy(name, b, end)
            gaps, gap_total = s.gaps_between(b.t, end.t, b.gap_seq.get(name, 0))
            if not known:
                gaps = [(b.t, end.t, "no readings")]
                gap_total = duration
            coverage = 1.0 if duration <= 0 else max(0.0, min(1.0, 1.0 - gap_total / duration))
            if duration <= 0 and s.gap_open is not None:
                coverage = 0.0
            listed = [Gap(gs - b.t, ge - b.t, r) for gs, ge, r in gaps[:MAX_GAPS_LISTED]]
            if len(gaps) > MAX_GAPS_LISTED:
                listed.append(Gap(0.0, 0.0, f"{len(gaps) - MAX_GAPS_LISTED} more gaps not listed"))
            details = dict(info.details)
            if s.faster_than_nominal:
                details["update_phase"] = "counter updates faster than update_period_s: read times used"
            elif s.phase is not None and s.mode == "counter":
                details["update_phase"] = (
                    f"estimated to ±{s.phase.uncertainty_s / 2 * 1e3:.0f} ms"
                    if s.phase.feasible != s.phase._full and s.stale_shown
                    else "unknown (counter staleness not corrected yet)"
                )
            if s.mode == "polled" and info.averaging_s > 0:
                details["averaging_shift_s"] = f"{info.averaging_s / 2:g}"
            domains[name] = energy
            prov[name] = DomainProvenance(
                method=info.method,
                sensor=info.sensor,
                interval_s=interval,
                update_period_s=info.update_period_s,
                coverage=coverage,
                gaps=tuple(listed),
                short_window=short,
                details=details,
            )
        energy_j = sum(domains.values())
        idle_w = self._idle_power_w
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
        )

    def _end(self, w: Window) -> Measurement:
        t = self.clock()
        self.sampler.edge_read()
        with self._lock:
            end = self._make_edge(t)
            self._fold_peaks()
            w._end_t = t
            m = self._measure(w, end, running=False)
            self._open.discard(w)
            try:
                self._pending.remove(w._begin)
            except ValueError:
                pass
            self._events += 1
            if w.cell:
                self._open_cells -= 1
                if self._open_cells == 0 and self._union_begin is not None:
                    self._cells_j += self._total_between(self._union_begin, end)
                    self._union_begin = None
        return m

    def _snapshot(self, w: Window) -> Measurement:
        t = self.clock()
        with self._lock:
            end = self._make_edge(t)
            w.peak_w = max(w.peak_w, end.power_w, self._tick_peak_w)
            return self._measure(w, end, running=True)

    def _on_tick(self, now: float) -> None:
        """Sampler hook, run for each tick once its readings are stored (:meth:`Sampler.sync`, on
        whichever thread syncs), with the store lock held: peak power while windows are open,
        begin-edge refinement, idle baseline while none is."""
        if self._open:
            total_p = 0.0
            for s in self._series:
                p = s.now_w
                if p is None:
                    p = s.power_now_w()
                    if p is None:
                        continue
                total_p += p
            if total_p > self._tick_peak_w:
                self._tick_peak_w = total_p
        elif self._idle_source == "none":
            self._measure_idle(now)
        if self._pending:
            for edge in self._pending:
                self._refine(edge)
            self._pending = [e for e in self._pending if e.pending]

    def _fold_peaks(self) -> None:
        """Hand the peak seen by the ticks since the last begin/end to the windows open over that
        stretch (the set of open windows only changes at a begin or an end).  Caller holds the lock."""
        p = self._tick_peak_w
        if p > 0.0:
            for w in self._open:
                if p > w.peak_w:
                    w.peak_w = p
        self._tick_peak_w = 0.0

    def _measure_idle(self, now: float) -> None:
        if self._open:
            self._idle_prev = None
            self._idle_events_seen = self._events
            return
        series = self.sampler.series.values()
        if not series or any(len(s.points) < 2 for s in series if s.last_good_t is not None):
            return
        quiet = not self._open and self._events == self._idle_events_seen
        total = 0.0
        for s in series:
            e, _ = s.energy_at(now)
            if e is not None:
                total += e
        if quiet and self._idle_prev is not None:
            t0, e0 = self._idle_prev
            if now > t0 and total >= e0:
                self._idle_acc_j += total - e0
                self._idle_acc_s += now - t0
        self._idle_prev = (now, total) if not self._open else None
        self._idle_events_seen = self._events
        if self._idle_acc_s >= self.idle_measure_s:
            self._idle_power_w = self._idle_acc_j / self._idle_acc_s
            self._idle_source = "measured"

