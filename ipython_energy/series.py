"""Per-domain cumulative energy: :class:`DomainSeries` and the :class:`Mark` taken of it at a
window edge.  What spans all domains (a window edge's :class:`~ipython_energy.edges.Snapshot`, the
per-tick tally) is in :mod:`.edges`.

A :class:`DomainSeries` is a ring buffer of points ``(tau_s, energy_j, power_w, read_t)`` on the
sampler's monotonic clock from which the cumulative energy at any recent instant can be
interpolated (:meth:`DomainSeries.energy_at`), plus the domain's gaps.  It offers what a window
needs as methods with units: :meth:`~DomainSeries.mark` at an edge, :meth:`~DomainSeries.energy_between`
two marks, :meth:`~DomainSeries.power_now_w`, :meth:`~DomainSeries.gaps_between`.

* **Counters** (``energy_j`` in the reading): ``energy_j`` is the counter.  When a counter only
  changes every ``update_period_s`` (NVML: ~100 ms) a read returns the value of the last update,
  not of "now".  The series then estimates the update phase (:class:`~ipython_energy.phase.PhaseLock`)
  from which reads saw the counter move, and stores each value at its estimated update time
  instead of its read time.
* **Polled power** (``power_w`` only): the series integrates power with trapezoids.  A power
  reading that is a trailing mean over ``averaging_s`` (NVML on Ampere and newer) describes the
  power ``averaging_s / 2`` earlier, so it is stored there.

Nothing here is thread-safe by itself, and nothing here starts a thread: the sampler's store lock
guards every series (:class:`~ipython_energy.sampler.Sampler`).

Why this module is over 500 lines: :class:`DomainSeries` is one state machine.  Its ingest rules
(resets and glitches, stale counters placed at their update times, counters faster than declared)
share some thirty fields with the queries that read them, and the hot path of every tick is one of
its methods; split across modules, those fields would become the cross-module private reads this
layout exists to end.
"""

from __future__ import annotations

import math
from collections import deque

from .phase import PhaseLock
from .sensors.base import DomainInfo, DomainReading

#: Counters whose update period is at most this are treated as fresh (read time = value time).
FRESH_PERIOD_S = 0.005
#: Low reads of a counter must rise this many times in a row, from the first, to be taken as a
#: reset (see :meth:`DomainSeries._ingest_decrease`).
RESET_RISES = 2
#: A read of a slowly updating counter that did not see it move is taken for a new (flat) update
#: only if it began this fraction of the update period (plus the phase estimate's uncertainty)
#: after the estimated update time: see :meth:`DomainSeries._ingest_counter`.
SAME_UPDATE_MARGIN = 0.02
#: A slowly updating counter is taken to be as slow as declared, and its values are placed at their
#: estimated update times, only once a read has seen it not move for at least this fraction of its
#: update period while it was counting (until then read times are used): a counter that updates
#: faster than that (every read, every 10 ms) never gives such evidence.  See
#: :meth:`DomainSeries._ingest_counter`.
STALE_PROOF = 0.05
#: Two moves of a slowly updating counter within less than this fraction of its update period are
#: evidence that it updates faster than declared; :data:`FAST_EVIDENCE` of them decide it.
FAST_SPAN = 0.8
FAST_EVIDENCE = 3
#: Power is never derived from counter points closer than this fraction of the counter's declared
#: update period (nor than :data:`MIN_POWER_SPAN_S`): the slope of two points a microsecond apart
#: is no power at all (see :meth:`DomainSeries.power_now_w`).
POWER_SPAN = 0.75
MIN_POWER_SPAN_S = 0.02
#: A stale counter's last two points read more than this many update periods apart say little
#: about its power now: the sensor's own power reading, where it gives one, is used instead (see
#: :meth:`DomainSeries._two_update_slope_w`).
SPARSE_UPDATES = 2.5
#: Closed gaps remembered per domain.
GAP_HISTORY = 512
#: A window shorter than its counter's update period, on a domain with no gap in it, gets at
#: least this fraction of the domain's recent mean power times its duration (see
#: :meth:`DomainSeries._short_floor_j`): never a near-0 J where the counter kept counting.
SHORT_WINDOW_FLOOR = 0.25
#: "Recent" for that floor: the mean power over at least this many update periods.
SHORT_FLOOR_SPAN_UPDATES = 3
#: Utilisation (busy fraction) below which energy counts as spent at low utilisation, unless the
#: sampler is given another (``low_util`` in the configuration, in per cent).
DEFAULT_LOW_UTIL = 0.3
_INF = math.inf


class DomainSeries:
    """Bounded history of one domain's cumulative energy, plus its gaps.

    All times are on the sampler's monotonic clock.  Not thread-safe by itself: the
    sampler's store lock guards it.
    """

    __slots__ = (
        "info", "points", "mode", "stale", "phase", "shift_s", "period_s",
        "has_read", "last_e", "last_lo", "last_hi",
        "last_good_t", "last_power_w", "last_increment_j", "offset_j", "last_raw_j",
        "_glitch", "_reset_from", "reset_check_j", "_timed_with", "_last_move", "_fast_evidence",
        "faster_than_nominal", "stale_shown", "power_span_s", "_ever_locked",
        "gap_open", "gaps", "gap_seq", "gap_closed_s", "_fast", "_now_w",
        "low_util", "has_util", "util", "util_t", "util_e", "low_j", "low_s",
    )

    def __init__(self, info: DomainInfo, capacity: int):
        self.info = info
        # (tau, energy_j, power_w, read_t): tau is when the value held (update time / shifted
        # power time); power_w is the reading (polled) or the slope from the previous point (counter)
        self.points: deque[tuple[float, float, float, float]] = deque(maxlen=capacity)
        self.mode: str | None = None  # "counter" or "polled", fixed by the first good reading
        self.period_s = info.update_period_s
        self.stale = info.update_period_s > FRESH_PERIOD_S
        self.phase = PhaseLock(info.update_period_s) if self.stale else None
        self.shift_s = info.averaging_s / 2.0
        # the last good counter read: its energy (it only grows, so a window edge can tell whether
        # the counter moved since another), and the start and end of the read call
        # (``last_lo``/``last_hi`` only matter for, and are only kept up to date on, stale counters)
        self.has_read = False
        self.last_e = 0.0
        self.last_lo = 0.0
        self.last_hi = 0.0
        self.last_good_t: float | None = None
        self.last_power_w: float | None = None  # the sensor's own power reading, if any
        self.last_increment_j = 0.0
        self.offset_j = 0.0  # rebasing after a counter reset
        self.last_raw_j: float | None = None
        # a stretch of reads below the last good one (whose raw value stays in last_raw_j):
        # (time, raw) of its first read, its latest raw value, and how many times it rose
        self._glitch: tuple[float, float, float, int] | None = None
        # after a rebase: (raw value before the reset, offset before it, time of the rebase, base),
        # kept until the counter passes that value again; reset_check_j is that value (else inf),
        # the bound above which a read leaves the short path to be checked (_passed_reset_value)
        self._reset_from: tuple[float, float, float, float] | None = None
        self.reset_check_j = _INF
        self._timed_with: tuple[float, float] | None = None  # (phase, width) used to place the points
        self._last_move: tuple[float, float] | None = None  # read bracket of the last counter change
        self._fast_evidence = 0
        self.faster_than_nominal = False
        #: True once a read saw this slowly updating counter not move for a good part of its update
        #: period (:data:`STALE_PROOF`) while counting: from then on its values are placed at their
        #: estimated update times; before, at their read times.
        self.stale_shown = False
        self._ever_locked = False  # set once the update phase was first pinned down (see _retime)
        #: Power is derived only from points at least this far apart (:data:`POWER_SPAN`).
        self.power_span_s = max(MIN_POWER_SPAN_S, POWER_SPAN * info.update_period_s)
        # gaps
        self.gap_open: tuple[float, str] | None = None
        self.gaps: deque[tuple[int, float, float, str]] = deque(maxlen=GAP_HISTORY)
        self.gap_seq = 0
        self.gap_closed_s = 0.0
        #: True while the next read of a fresh counter can take :meth:`ingest`'s short path
        #: (counter mode, not stale, no gap open, no suspected reset pending).
        self._fast = False
        # :meth:`power_now_w` as of the last read when ingest could tell it cheaply, else None
        self._now_w: float | None = None
        # utilisation (see set_util): the threshold (a busy fraction), whether any reading came,
        # the latest reading, when it came and the cumulative energy then, and the energy and
        # time classified as spent below the threshold so far
        self.low_util = DEFAULT_LOW_UTIL
        self.has_util = False
        self.util: float | None = None
        self.util_t: float | None = None
        self.util_e: float | None = None
        self.low_j = 0.0
        self.low_s = 0.0

    # -- gaps -------------------------------------------------------------------------------
    def bad(self, t: float, reason: str) -> None:
        self._fast = False
        self._now_w = None
        if self.gap_open is None:
            start = self.last_good_t if self.last_good_t is not None else t
            self.gap_open = (start, reason)

    def _good(self, t: float) -> None:
        if self.gap_open is not None:
            start, reason = self.gap_open
            self.gap_seq += 1
            self.gaps.append((self.gap_seq, start, t, reason))
            self.gap_closed_s += max(0.0, t - start)
            self.gap_open = None
        self.last_good_t = t

    def gaps_between(self, a: float, b: float, since_seq: int) -> tuple[list[tuple[float, float, str]], float]:
        """Gaps overlapping ``[a, b]`` clipped to it, and their total length.

        ``since_seq`` is :attr:`gap_seq` when the window began: if more gaps closed since than
        the history keeps, the oldest are missing from the list but still counted in the total.
        """
        out: list[tuple[float, float, str]] = []
        for seq, s, e, reason in self.gaps:
            if e > a and s < b:
                out.append((max(s, a), min(e, b), reason))
        if self.gap_open is not None and b > self.gap_open[0]:
            s = max(self.gap_open[0], a)
            out.append((s, b, self.gap_open[1]))
        total = sum(e - s for s, e, _ in out)
        lost = self.gap_seq - since_seq - GAP_HISTORY
        if lost > 0:
            out.append((a, a, f"{lost} earlier gaps not listed"))
        return out, total

    # -- utilisation ------------------------------------------------------------------------
    def set_util(self, t: float, u: float | None) -> None:
        """A utilisation reading taken at ``t``: a busy fraction (0-1), or None (no reading for this
        domain this time).  Called right after the energy of the same read was stored, and only
        when a reading arrives, so the tick's hot path (:meth:`ingest`) is not touched.

        The reading describes the time since the previous one (NVML's utilisation and a CPU-time
        difference both look back), so it classifies that stretch: when it is below
        :attr:`low_util`, the time and the energy over it (the cumulative energy at ``t``, as a window
        edge would take it, minus at the previous reading) are added to :attr:`low_s` and
        :attr:`low_j`.  The first reading covers the time since the series' first point.  A stretch
        that ends in a None reading is not classified (neither low nor not).
        """
        e = self.energy_at(t)[0]
        if u is not None and u == u:  # (NaN is no reading)
            ut, ue = self.util_t, self.util_e
            if ut is None and not self.has_util and self.points:
                ut, ue = self.points[0][0], self.points[0][1]  # the first reading: since the first point
            if u < self.low_util and ut is not None:
                if e is not None and ue is not None and e > ue:
                    self.low_j += e - ue
                if t > ut:
                    self.low_s += t - ut
            self.util = u
            self.has_util = True
        else:
            self.util = None
        self.util_t = t
        self.util_e = e

    def _low_at(self, t: float, e: float | None) -> tuple[float | None, float | None]:
        """Energy and time spent at low utilisation up to ``t`` (where the cumulative energy is ``e``):
        what :meth:`set_util` classified, plus the stretch since the latest reading, taken at that
        reading's utilisation (the next reading, which will classify it, has not come yet).
        ``(None, None)`` for a domain that never reported utilisation."""
        if not self.has_util:
            return None, None
        lj, ls = self.low_j, self.low_s
        u, ut = self.util, self.util_t
        if u is not None and u < self.low_util and ut is not None:
            if e is not None and self.util_e is not None and e > self.util_e:
                lj += e - self.util_e
            if t > ut:
                ls += t - ut
        return lj, ls

    def low_util_between(self, b: "Mark", e: "Mark", energy_j: float,
                         short: bool) -> tuple[float, float] | None:
        """``(energy_j, seconds)`` spent below :attr:`low_util` between two marks, or None when the
        domain reported no utilisation by ``e``.  Never below 0 nor above ``energy_j`` (the
        window's energy as :meth:`energy_between` gave it) and the window's length.  A short
        window (whose energy was interpolated) gets ``energy_j`` times its low-utilisation share
        of the time."""
        if e.low_j is None:
            return None
        duration = max(0.0, e.t - b.t)
        lj = e.low_j - (b.low_j or 0.0)
        ls = min(max(0.0, e.low_s - (b.low_s or 0.0)), duration)
        if short:
            lj = energy_j * ls / duration if duration > 0 else 0.0
        return min(max(0.0, lj), energy_j), ls

    # -- ingest -----------------------------------------------------------------------------
    def ingest(self, t: float, r: DomainReading, t_lo: float | None = None, t_hi: float | None = None) -> None:
        """Add one reading taken at ``t``; bad readings become gaps.

        ``t_lo``/``t_hi`` bound when the sensor really sampled (the read call's start and end);
        they keep the update-phase evidence honest when a read was held up.
        """
        e, p = r
        if (self._fast and e is not None and self.last_raw_j <= e < self.reset_check_j
                and (p is None or 0.0 <= p < _INF)):
            # The common case, kept short because it runs for every domain on every tick: a fresh
            # counter in good health that did not go backwards (NaN and inf fail the comparisons
            # and take the long path, which records them; so does a read that passes the value a
            # counter had before a reset).  Same result as _ingest_counter.
            # (while _fast holds, the newest point is (last_good_t, last_e, …): tau is the read time)
            self.last_raw_j = e
            if p is not None:
                self.last_power_w = p
            t0 = self.last_good_t
            if t <= t0:
                return  # not newer than what we have
            e0 = self.last_e
            energy = e + self.offset_j
            self.last_increment_j = energy - e0
            seg = t - t0
            slope = (energy - e0) / seg
            self.points.append((t, energy, slope, t))
            self._now_w = (slope if slope > 0.0 else 0.0) if seg >= self.power_span_s else None
            self.last_e = energy
            self.last_good_t = t
            return
        if p is not None:
            if not math.isfinite(p) or p < 0:
                self.bad(t, "nan power" if math.isnan(p) else "negative power" if p < 0 else "infinite power")
                return
        if e is None:
            if p is None:
                self.bad(t, "empty reading")
                return
            if self.mode == "counter":
                self.bad(t, "counter missing from reading")
                return
            self.mode = "polled"
            self._ingest_power(t, p)
            return
        if not math.isfinite(e) or e < 0:
            self.bad(t, "nan energy" if math.isnan(e) else "negative energy" if e < 0 else "infinite energy")
            return
        if self.mode == "polled":
            self.mode = "counter"  # a sensor that starts giving energy: counters win
            self.points.clear()
        self.mode = "counter"
        if p is not None:
            self.last_power_w = p
        self._ingest_counter(t, e, t if t_lo is None else t_lo, t if t_hi is None else t_hi)

    def _ingest_power(self, t: float, p: float) -> None:
        tau = t - self.shift_s
        pts = self.points
        if pts:
            t0, e0, p0, _ = pts[-1]
            if tau <= t0:
                return  # not newer than what we have
            energy = e0 + 0.5 * (p0 + p) * (tau - t0)
        else:
            energy = 0.0
        pts.append((tau, energy, p, t))
        self.last_power_w = p
        self._now_w = p
        self._good(t)

    def _ingest_counter(self, t: float, raw: float, t_lo: float, t_hi: float) -> None:
        last = self.last_raw_j
        if last is not None:
            if raw < last:
                if not self._ingest_decrease(t, raw, last):
                    return
            else:
                if raw >= self.reset_check_j:
                    self._passed_reset_value(t, raw, last)
                # back at or above the last good value: any lower reads since were a glitch, and
                # the counter, which kept counting, bridges them
                self._glitch = None
        self.last_raw_j = raw
        energy = raw + self.offset_j
        pts = self.points
        had = self.has_read
        moved = had and energy > self.last_e
        period = self.period_s
        if moved and self.stale:
            lm = self._last_move
            if lm is not None and t_hi - lm[0] < FAST_SPAN * period:
                # two changes within less than one nominal period (each change needs an update after
                # the read before it sampled, so the two updates are distinct and both fell between
                # the start of the read before the first change and the end of this one): this
                # counter is faster than declared
                self._fast_evidence += 1
                if self._fast_evidence >= FAST_EVIDENCE:
                    self._use_read_times()
            self._last_move = (self.last_lo, t_hi)
        if self.stale:
            lock = self.phase
            if had:
                lock.age(t_hi)  # what was known of the phase fades between pieces of evidence
                if moved:
                    lock.moved(self.last_lo, t_hi)  # an update fell after the last read began, before this one ended
                elif self.last_increment_j > 0:
                    lock.still(self.last_hi, t_lo)  # none fell between the end of the last read and the start of this
                    if t_lo - self.last_hi >= STALE_PROOF * period:
                        self.stale_shown = True
        if self.stale and not self.stale_shown:
            # no read has shown yet that this counter holds its value between updates as long as
            # declared: its values are placed at their read times until one does (an unmoved read
            # is not stored meanwhile; the next move carries its energy)
            if had and not moved:
                self.has_read, self.last_e, self.last_lo, self.last_hi = True, energy, t_lo, t_hi
                self._good(t)
                return
            tau = t
            if pts and tau <= pts[-1][0]:
                return
        elif self.stale:
            self._retime()
            tau = lock.last_update(t)
            if pts:
                t_last = pts[-1][0]
                read_began = t_lo - lock.uncertainty_s - SAME_UPDATE_MARGIN * period
                if not moved and lock.last_update(read_began) <= t_last + 0.5 * period:
                    # an unmoved read that may have sampled the counter before the estimated update
                    # (the read began within the estimate's uncertainty of it, or a driver call took
                    # milliseconds): the same update as the last point, not a flat step, which
                    # would put a stretch of zero power where the counter was counting
                    self.has_read, self.last_e, self.last_lo, self.last_hi = True, energy, t_lo, t_hi
                    self._good(t)
                    return  # same update as the last point: nothing new
                if tau <= t_last + 0.5 * period:
                    tau = self._moved_in_last_update(t_last, t_hi)
                tau = max(tau, t_last + 1e-6)
        else:
            tau = t
            if pts and tau <= pts[-1][0]:
                return
        if pts:
            t0, e0, _, _ = pts[-1]
            slope = (energy - e0) / (tau - t0) if tau > t0 else 0.0
            self.last_increment_j = energy - e0
        else:
            slope = self.last_power_w if self.last_power_w is not None else 0.0
        pts.append((tau, energy, slope, t))
        self.has_read, self.last_e, self.last_lo, self.last_hi = True, energy, t_lo, t_hi
        self._good(t)
        self._fast = not self.stale  # _good closed any gap; a pending reset check returned above
        self._now_w = None

    def _ingest_decrease(self, t: float, raw: float, last: float) -> bool:
        """A read below the last good one (``last``, raw): a glitch, or a counter reset.

        The rule, from the readings alone:

        * Reads below the last good value are a gap (``decreasing counter``) and are not stored;
          ``last_raw_j`` keeps the last good value meanwhile.
        * A later read at or above that value (the counter is back on its trajectory) ends the
          glitch: the gap closes, nothing is rebased, and the counter, which kept counting,
          bridges the gap (see :meth:`_ingest_counter`).
        * Low reads that count up from a new base, each of :data:`RESET_RISES` reads strictly above
          the one before (as a restarted counter does), are a reset: the series is rebased so that
          the energy continues from the last good value plus what the counter gained since the
          first low read (the base).  The stretch from the last good read to the first low one
          is the gap's and is not counted.  A low value that stays put (a counter reading 0, a
          stuck register) is not a reset: it stays a gap until the counter counts or comes back.
        * A read below the previous low read starts the low stretch over from that read.

        Returns True when the read is to be stored (rebased), False when it was a gap.
        """
        g = self._glitch  # (time, raw) of the first low read, the latest low raw, rises since the first
        if g is None or raw < g[2]:
            self._glitch = (t, raw, raw, 0)
            self.bad(t, "decreasing counter")
            return False
        if raw == g[2] or g[3] + 1 < RESET_RISES:
            if raw > g[2]:
                self._glitch = (g[0], g[1], raw, g[3] + 1)
            self.bad(t, "decreasing counter")
            return False
        # counting up from a new base: the counter was reset.  Rebase from the first low read.
        base = g[1]
        if self._reset_from is None:
            # remember the value before the reset until the counter passes it again
            self._reset_from = (last, self.offset_j, t, base)
            self.reset_check_j = last
        else:
            # reset again before the counter passed the first reset's value: keep watching for a
            # return to that value, counting the gain from this rebase
            before, offset_before, _, _ = self._reset_from
            self._reset_from = (before, offset_before, t, base)
        self.offset_j += last - base
        self._glitch = None
        return True

    def _passed_reset_value(self, t: float, raw: float, last: float) -> None:
        """After a rebase, a read reaches the value the counter had before the reset.

        A restarted counter gets there by counting, in steps like its others.  A counter whose
        "reset" was in fact a stretch of wrong, lower readings that went on growing gets there in
        one jump back to its earlier values.  The rule: a step from below that value to at or
        above it that is larger than everything the counter gained since the rebase
        (``raw - last > last - base``) is such a return.  The rebase is then undone: the energy
        continues from the counter's earlier values (never below what was already counted), and
        the stretch since the rebase becomes a gap (``counter returned to its pre-reset values``),
        so the jump itself adds no energy.  Either way the check is disarmed.
        """
        _, offset_before, t_rebase, base = self._reset_from
        self._reset_from = None
        self.reset_check_j = _INF
        if raw - last > last - base:
            self.offset_j = max(self.last_e, raw + offset_before) - raw
            if self.gap_open is None:
                self.gap_open = (t_rebase, "counter returned to its pre-reset values")
            elif t_rebase < self.gap_open[0]:
                self.gap_open = (t_rebase, self.gap_open[1])

    def _use_read_times(self) -> None:
        """The counter updates faster than declared: from now on its values are placed at their read
        times, and so are the ones already stored at an estimated update time (all of them: the
        estimate was of a period the counter does not have), so that edges refined later and the
        slopes between points agree with the reads."""
        self.stale = False
        self.phase = None
        self.faster_than_nominal = True
        self._timed_with = None
        pts = self.points
        prev_tau, prev_e = -math.inf, None
        for i in range(len(pts)):
            _, e, p, tr = pts[i]
            tau = max(tr, prev_tau)
            if prev_e is not None:
                p = (e - prev_e) / (tau - prev_tau) if tau > prev_tau else 0.0
            pts[i] = (tau, e, p, tr)
            prev_tau, prev_e = tau, e

    def _moved_in_last_update(self, t_last: float, t_hi: float) -> float:
        """Where to place a read that saw the counter move although the phase estimate puts it in the
        update of the point before (at ``t_last``): a read right at an update boundary, within the
        estimate's uncertainty.  This is the next update, one period on, and not after the read
        (``t_hi``).  Used both when a read is stored and when points are re-placed, so that the two
        agree (re-placing used to put such a point 1 µs after the one before)."""
        return min(t_last + self.period_s, t_hi)

    def _retime(self, depth: int = 32) -> None:
        """Re-place the newest points when the phase estimate has moved (mostly right after start).

        Each point goes where :meth:`_ingest_counter` would put it with the new estimate: at the last
        estimated update at or before its read, and a point whose counter moved yet lands in the
        update of the point before goes one period after that one (never after its read).  Until
        the phase is first pinned down, every point is re-placed, back to the first read: a window
        that began right after the start is refined from them.
        """
        lock = self.phase
        if not lock.known:
            return
        phase, width = lock.estimate()
        old = self._timed_with
        period = self.info.update_period_s
        bin_s = period / lock.BINS
        if old is not None and abs(phase - old[0]) < 2 * bin_s and width >= old[1] / 2:
            return
        self._timed_with = (phase, width)
        pts = self.points
        n = len(pts)
        if not self._ever_locked:
            self._ever_locked = lock.locked
            depth = n
        k0 = max(0, n - depth)
        if k0 > 0:
            prev_tau, prev_e = pts[k0 - 1][0], pts[k0 - 1][1]
        else:
            prev_tau, prev_e = -math.inf, None
        for i in range(k0, n):
            _, e, p, tr = pts[i]
            tau = min(lock.last_update(tr), tr)
            if prev_e is not None and e > prev_e and tau <= prev_tau + 0.5 * period:
                tau = self._moved_in_last_update(prev_tau, tr)
            tau = max(tau, prev_tau + 1e-6)
            if prev_e is not None:
                p = (e - prev_e) / (tau - prev_tau)
            pts[i] = (tau, e, p, tr)
            prev_tau, prev_e = tau, e

    # -- energy -----------------------------------------------------------------------------
    def energy_at(self, x: float) -> tuple[float | None, bool]:
        """Cumulative energy in joules at time ``x``: ``(energy_j, final)``.

        ``final`` is True when later points bracket ``x`` (interpolated), False when it was
        extrapolated past the newest point (it may improve once more samples arrive).
        ``(None, True)`` when ``x`` is older than the buffer; ``(None, False)`` when nothing was
        read yet.  While the domain is in a gap, extrapolation stops at the last good read.
        """
        pts = self.points
        if not pts:
            return None, False
        t_last, e_last, p_last, _ = pts[-1]
        if x >= t_last:
            cap = x
            if self.gap_open is not None:
                cap = min(x, max(t_last, self.last_good_t or t_last))
            d = cap - t_last
            if d <= 0:
                return e_last, x == t_last
            if self.mode == "polled":
                if self.shift_s > 0 and len(pts) >= 2:
                    # the averaged power is delayed: continue its recent trend over the blind stretch
                    k = self._trend_w_per_s()
                    p_end = max(0.0, p_last + k * d)
                    if p_end == 0.0 and k < 0:
                        d0 = p_last / -k
                        return e_last + 0.5 * p_last * d0, False
                    return e_last + 0.5 * (p_last + p_end) * d, False
                return e_last + p_last * d, False
            return e_last + self._extrapolation_w() * d, False
        # scan back from the newest point (edges and pending starts are recent)
        n = len(pts)
        i = n - 2
        while i >= 0 and pts[i][0] > x:
            i -= 1
        if i < 0:
            return None, True
        t0, e0, p0, _ = pts[i]
        t1, e1, p1, _ = pts[i + 1]
        span = t1 - t0
        if span <= 0:
            return e0, True
        d = x - t0
        if self.mode == "polled":
            return e0 + p0 * d + (p1 - p0) * d * d / (2.0 * span), True
        return e0 + (e1 - e0) * d / span, True

    def mark(self, t: float) -> "Mark":
        """This domain at time ``t`` (a window edge): its cumulative energy there, whether that is
        final, and what :meth:`energy_between` needs to know about the counter and the gaps then."""
        e, final = self.energy_at(t)
        mark = Mark(t, e, (final and self.timing_settled) or (e is None and bool(self.points)),
                    self.last_e, self.gap_seq)
        if self.has_util:
            mark.low_j, mark.low_s = self._low_at(t, e)
        return mark

    def refine(self, mark: "Mark") -> None:
        """Re-evaluate a mark that was extrapolated, now that later points may bracket it.  A mark
        older than the buffer keeps what it had and becomes final."""
        if mark.final:
            return
        e, fin = self.energy_at(mark.t)
        if e is None:
            if self.points:
                mark.final = True
            return
        mark.energy_j = e
        mark.final = fin and self.timing_settled

    def energy_between(self, b: "Mark", e: "Mark") -> tuple[float, bool, bool]:
        """Energy of this domain between two of its marks: ``(energy_j, short_window, known)``.

        * Polled power: the difference of the integrated energy; ``short_window`` when the span
          is shorter than the update period or the sensor's averaging width.
        * A counter that moved: the difference of the cumulative energy.  A span shorter than one
          update with no gap since ``b`` gets at least :data:`SHORT_WINDOW_FLOOR` of the recent
          mean power times its length (:meth:`_short_floor_j`).
        * A counter that did not move between the marks (or moved with the marks inside one
          update): never 0 J, the power for an unmoved counter (:meth:`_unmoved_w`) times the
          covered time (:meth:`_unmoved_span_s`); ``short_window`` is then True.

        ``known`` is False (and the energy 0) when the domain had no reading at either mark; a
        domain first read after ``b`` counts from its first point.
        """
        duration = e.t - b.t
        eb, ee = b.energy_j, e.energy_j
        if eb is None and ee is not None:
            # the domain had no reading at the begin mark: count from its first point
            eb = self.points[0][1] if self.points else None
        if eb is None or ee is None:
            return 0.0, False, False
        info = self.info
        short = duration < info.update_period_s
        if self.mode == "polled":
            short = short or duration < info.averaging_s
            return max(0.0, ee - eb), short, True
        moved = e.counter_j > b.counter_j
        floor = (self._short_floor_j(duration)
                 if short and self.gap_open is None and self.gap_seq == b.gap_seq else 0.0)
        if not moved:
            # the counter did not move: never report 0 J for that, interpolate from recent power
            p = self._unmoved_w(e.t)
            if p is None:
                p = self.power_now_w() or 0.0
            return max(max(0.0, p) * self._unmoved_span_s(b, e), floor), True, True
        energy = max(0.0, ee - eb)
        if energy == 0.0 and duration > 0 and self.gap_open is None:
            # moved, yet no energy between the marks (they fell within one update): interpolate
            p = self._unmoved_w(e.t) or self.power_now_w() or 0.0
            return max(max(0.0, p) * self._unmoved_span_s(b, e), floor), True, True
        return max(energy, floor), short, True

    def _short_floor_j(self, duration: float) -> float:
        """The least a short window on a healthy counter is given, in joules: :data:`SHORT_WINDOW_FLOOR`
        of the domain's recent power times the window's duration.  Recent power: the higher of the
        mean power over the counter's last :data:`SHORT_FLOOR_SPAN_UPDATES` updates
        (:meth:`_recent_mean_w`) and the sensor's own last power reading, where it gives one (NVML does).

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
        p = max(self._recent_mean_w(SHORT_FLOOR_SPAN_UPDATES * self.info.update_period_s) or 0.0,
                self.last_power_w or 0.0)
        if p <= 0.0 or duration <= 0.0:
            return 0.0
        return SHORT_WINDOW_FLOOR * p * duration

    def _unmoved_span_s(self, b: "Mark", e: "Mark") -> float:
        """How long to interpolate a counter that did not move between the marks, in seconds.

        The whole span while the domain had no gap in it (a healthy counter in a window shorter
        than its updates: never a silent 0 J).  Otherwise only the time not in a gap, and at most
        one update period of it: a counter that could be read and did not move can hide at most
        one update's worth of energy, and the gap's stretch gets none (its coverage says so).
        """
        duration = e.t - b.t
        if self.gap_open is None and self.gap_seq == b.gap_seq:
            return duration  # no gap opened or closed since the begin mark
        _, gap_s = self.gaps_between(b.t, e.t, b.gap_seq)
        if gap_s <= 0.0:
            return duration
        return min(max(0.0, duration - gap_s), self.info.update_period_s)

    # -- power ------------------------------------------------------------------------------
    # One public figure, power_now_w(): the current power, for the readout and for peaks.  Energy
    # past the newest point, and inside a window in which a counter did not move, needs a power
    # too, each with its own rule; those are private, one per use:
    #   _extrapolation_w   energy_at past the newest point
    #   _unmoved_w         energy_between, a counter that did not move between the marks
    #   _recent_mean_w     energy_between, the floor of a short window
    # built on three slopes of the cumulative energy: _two_update_slope_w (a stale counter's last
    # two updates), _recent_slope_w (the newest stretch of at least one update period) and
    # _last_steps (a fresh counter's last two moves).

    def power_now_w(self) -> float | None:
        """Current power in watts; None before the first reading.

        Polled power: the last reading.  A counter: the slope of its last segment if that is at
        least :attr:`power_span_s` long, else over the newest points that span at least one update
        period (:meth:`_recent_slope_w`), or the sensor's own power reading while the series spans
        less than that: never over two points that the update-time estimate put close together,
        whose slope can be anything up to megawatts.
        """
        now = self._now_w  # worked out by ingest when it could (same value)
        if now is not None:
            return now
        if self.mode == "counter":
            pts = self.points
            if len(pts) >= 2 and pts[-1][0] - pts[-2][0] >= self.power_span_s:
                return max(0.0, pts[-1][2])  # the last segment is long enough to be a fair slope
            if len(pts) >= 2 and pts[-1][0] - pts[0][0] < self.power_span_s:
                p = self.last_power_w  # too little history for a slope: the sensor's own reading, if any
            else:
                p = self._recent_slope_w()
            return None if p is None else max(0.0, p)
        return self.last_power_w

    def _extrapolation_w(self) -> float:
        """Watts (never negative) to carry a counter past its newest point: a stale counter's mean
        over its last two updates (:meth:`_two_update_slope_w`), a fresh one's recent slope."""
        if self.stale:
            return self._two_update_slope_w()
        p = self._recent_slope_w()
        return p if p is not None and p > 0.0 else 0.0

    def _unmoved_w(self, now: float) -> float | None:
        """Power to assume for a window in which the counter did not move.

        A stale counter: as past its newest point (:meth:`_two_update_slope_w`).  A fresh one: the
        energy of its last step over the time between its last two steps; once it has been still
        for more than twice that spacing, the average since the step before (which decays towards
        zero for a counter that stopped counting).
        """
        if self.stale and len(self.points) >= 2:
            return self._two_update_slope_w()
        if self.mode != "counter":
            return self._recent_slope_w()
        steps = self._last_steps()
        if steps is None:
            return self._recent_slope_w()
        (t0, e0), (t1, e1) = steps
        spacing = t1 - t0
        if spacing <= 0:
            return self._recent_slope_w()
        if now - t1 <= 2 * spacing:
            return (e1 - e0) / spacing
        return (e1 - e0) / (now - t0)

    def _recent_mean_w(self, span_s: float) -> float | None:
        """Mean power over the newest points that span at least ``span_s`` (all of them if they span
        less), from the cumulative energy; None without two points or for polled power.  Unlike
        :meth:`_two_update_slope_w` it does not hang on the last step, so one step placed too early
        or too late (a flat stretch) weighs only its share."""
        if self.mode != "counter" or len(self.points) < 2:
            return None
        return self._slope_back(span_s, 256)[0]

    def _last_steps(self, depth: int = 4096) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """(read time, energy) of the last two reads of a fresh counter that saw it move.

        Found from the points when asked (at a window edge) rather than kept on every tick.
        The first point counts as a step while the buffer still holds it.  None if fewer than
        two are found within the newest ``depth`` points.
        """
        pts = self.points
        n = len(pts)
        found: list[tuple[float, float]] = []
        i = n - 1
        stop = max(0, n - depth)
        while i > stop and len(found) < 2:
            if pts[i][1] > pts[i - 1][1]:
                found.append((pts[i][3], pts[i][1]))
            i -= 1
        if len(found) < 2 and i == 0 and n < (pts.maxlen or n + 1) and n:
            found.append((pts[0][3], pts[0][1]))
        if len(found) < 2:
            return None
        return found[1], found[0]

    def _two_update_slope_w(self) -> float:
        """Mean power over a counter's last two updates (about two update periods), never negative.

        Two periods rather than one: a load that alternates at about the update rate then averages
        out instead of being extrapolated with the opposite phase, while a ramp is lagged by only
        half a period.  When the last two reads are more than :data:`SPARSE_UPDATES` periods apart
        (read at the idle interval), the sensor's own power reading, where it has one (NVML does).
        """
        pts = self.points
        n = len(pts)
        if n < 2:
            return max(0.0, self.last_power_w or 0.0)
        if self.last_power_w is not None and pts[-1][3] - pts[-2][3] > SPARSE_UPDATES * self.info.update_period_s:
            # the last two reads are seconds apart (a counter read at the idle interval between
            # windows, or one that stalled): their mean is old news; the sensor's own power is not
            return max(0.0, self.last_power_w)
        k = 3 if n >= 3 and pts[-1][0] - pts[-3][0] <= 2.5 * self.info.update_period_s else 2
        t1, e1 = pts[-1][0], pts[-1][1]
        stop = min(n, 64)
        while k < stop and t1 - pts[-k][0] < self.power_span_s:
            k += 1  # never a slope over points closer than power_span_s
        t0, e0 = pts[-k][0], pts[-k][1]
        return max(0.0, (e1 - e0) / (t1 - t0)) if t1 > t0 else 0.0

    def _recent_slope_w(self) -> float | None:
        """Power over the most recent stretch of at least one update period (or the last reading)."""
        if self.mode == "polled" or len(self.points) < 2:
            return self.last_power_w
        p, reached = self._slope_back(max(self.info.update_period_s, 0.02), 64)
        if reached:
            return p
        if len(self.points) <= 64:  # the whole buffer is younger than one update period
            return self.last_power_w if p is None else p
        # More than 64 points inside one update period (window edges of rapid cells add points):
        # a fresh counter's slope over them is still exact; a stale counter's is not a power.
        if self.info.update_period_s <= FRESH_PERIOD_S and p is not None:
            return p
        return self.last_power_w

    def _slope_back(self, span_s: float, depth: int) -> tuple[float | None, bool]:
        """Slope from the newest point back to the newest point at least ``span_s`` older, looking
        at most ``depth`` points back: ``(watts, reached)``.  When no point that old is within
        ``depth``, the slope to the oldest point looked at, with ``reached`` False.  Watts are None
        when that point is not older.  Needs two points."""
        pts = self.points
        n = len(pts)
        t1, e1 = pts[-1][0], pts[-1][1]
        k = n - 2
        stop = max(0, n - depth)
        while k > stop and t1 - pts[k][0] < span_s:
            k -= 1
        t0, e0 = pts[k][0], pts[k][1]
        return ((e1 - e0) / (t1 - t0) if t1 > t0 else None), t1 - t0 >= span_s

    def _trend_w_per_s(self) -> float:
        """How fast a polled power is changing (W/s), over the newest points spanning at least its
        averaging shift: what :meth:`energy_at` continues over the blind stretch."""
        pts = self.points
        t1, p1 = pts[-1][0], pts[-1][2]
        want = max(self.shift_s, 0.05)
        for k in range(2, min(len(pts), 256) + 1):
            t0, p0 = pts[-k][0], pts[-k][2]
            if t1 - t0 >= want:
                return (p1 - p0) / (t1 - t0)
        t0, p0 = pts[0][0], pts[0][2]
        return (p1 - p0) / (t1 - t0) if t1 > t0 else 0.0

    # -- state ------------------------------------------------------------------------------
    @property
    def timing_settled(self) -> bool:
        """False while a slowly updating counter's timing is still being found out: until a read has
        shown that it updates as slowly as declared (:attr:`stale_shown`) or that it updates faster
        (then read times are used), and while its update phase is being estimated."""
        return self.phase is None or (self.stale_shown and self.phase.locked)

    @property
    def in_gap(self) -> bool:
        """True while the domain has no good readings (a gap is open)."""
        return self.gap_open is not None

    def provenance_details(self) -> dict[str, str]:
        """The domain's static facts (:attr:`DomainInfo.details`) plus how its timing was handled:
        ``update_phase`` for a counter that updates slowly, ``averaging_shift_s`` for averaged power."""
        info = self.info
        details = dict(info.details)
        if self.faster_than_nominal:
            details["update_phase"] = "counter updates faster than update_period_s: read times used"
        elif self.phase is not None and self.mode == "counter":
            details["update_phase"] = (
                f"estimated to ±{self.phase.uncertainty_s / 2 * 1e3:.0f} ms"
                if self.phase.known and self.stale_shown
                else "unknown (counter staleness not corrected yet)"
            )
        if self.mode == "polled" and info.averaging_s > 0:
            details["averaging_shift_s"] = f"{info.averaging_s / 2:g}"
        return details


class Mark:
    """One domain's cumulative energy at one instant (a window edge), refined while not final.

    Attributes:
        t: The instant, on the sampler's clock (seconds).
        energy_j: Cumulative energy there, or None when the domain had no reading yet.
        final: False while ``energy_j`` was extrapolated (see :meth:`DomainSeries.refine`).
        counter_j: The counter's last good reading then (did it move between two marks?).
        gap_seq: How many gaps had closed then.
        low_j, low_s: Energy (J) and time (s) spent below the utilisation threshold up to then
            (:meth:`DomainSeries.set_util`), or None for a domain that has reported no utilisation.
    """

    __slots__ = ("t", "energy_j", "final", "counter_j", "gap_seq", "low_j", "low_s")

    def __init__(self, t: float, energy_j: float | None, final: bool, counter_j: float, gap_seq: int):
        self.t = t
        self.energy_j = energy_j
        self.final = final
        self.counter_j = counter_j
        self.gap_seq = gap_seq
        self.low_j: float | None = None
        self.low_s: float | None = None
