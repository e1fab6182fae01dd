"""The sampler: one named daemon thread that reads every sensor at a fixed rate into bounded buffers.

It knows nothing about cells, runs or sweeps.  What it keeps, per domain, is a
:class:`DomainSeries`: a ring buffer of points ``(tau_s, energy_j, power_w)`` on
the monotonic clock from which the cumulative energy at any recent instant can be
interpolated, plus the domain's gaps.

* **Counters** (``energy_j`` in the reading): ``energy_j`` is the counter.  When a
  counter only changes every ``update_period_s`` (NVML: ~100 ms) a read returns the
  value of the last update, not of "now".  The series then estimates the update
  phase (:class:`PhaseLock`) from which reads saw the counter move, and stores each
  value at its estimated update time instead of its read time.
* **Polled power** (``power_w`` only): the series integrates power with trapezoids.
  A power reading that is a trailing mean over ``averaging_s`` (NVML on Ampere and
  newer) describes the power ``averaging_s / 2`` earlier, so it is stored there.

Each hardware sensor is read by its own small reader thread, dispatched by the
sampler thread on every tick (sensors that only compute in-process and declare
``nonblocking = True``, such as the replay sensor and the cpu-model estimate, are
sampled on the sampler thread itself: see the protocol in :mod:`.sensors.base`); a
sensor whose previous read is still in flight is not dispatched again, and once it has
been in flight longer than ``hang_timeout_s`` its domains get a ``hung`` gap.  A hung
sensor therefore never stalls the others, and :meth:`Sampler.stop` returns promptly.
Readings that raise, are NaN or negative, or make a counter go backwards become gaps too.

Window edges (:meth:`Sampler.edge_read`) sample the nonblocking sensors on the caller's
thread and hand the blocking ones to their reader threads, waiting a few milliseconds
at most (:meth:`Sampler.edge_timeout_s`): a sensor that hangs for the first time during
an edge read costs the caller that bound, not the hang, and its domains get a ``hung``
gap from their last good read.

The tick runs ten times a second for the kernel's lifetime, and each wake-up finds the
CPU's caches cold, so its cost is watched (``bench/sampler_overhead.py``): the thread
sleeps in :func:`time.sleep` for relative durations (cheaper per wake-up than a timed
lock or event wait, or than absolute deadlines); for a nonblocking sensor it only
records the time and the sensor's ``sample()`` in preallocated lists, without a lock,
and the readings are worked out and stored in batches (:meth:`Sampler.sync`, run every
few ticks and by every reader of the series), where a healthy fresh counter's reading
takes a short path through :meth:`DomainSeries.ingest`.  Hardware sensors are read
through their allocation-light ``read_values()`` where they have one.  Anything that can
wait for a window edge (peak folding, the last counter steps) is done there instead.

When a counter updates slowly, tick times are dithered within each interval (a
golden-ratio sequence over the whole interval) so that a counter updating at about the
sampling rate is observed at varying phases; that is what lets :class:`PhaseLock` find
its update times.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable, Iterable

from .sensors.base import DomainInfo, DomainReading, Sensor

THREAD_NAME = "ipython-energy-sampler"
#: Counters whose update period is at most this are treated as fresh (read time = value time).
FRESH_PERIOD_S = 0.005
#: Default buffer length in seconds of samples (per domain).
DEFAULT_BUFFER_S = 600.0
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
#: Right after :meth:`Sampler.start`, when a counter updates slowly, the first this many ticks come
#: every :data:`PROBE_FRACTION` of its update period (if the interval is longer): dense reads that
#: show within a fraction of a second whether it updates as slowly as declared (and pin its update
#: phase down sooner), before the first window depends on it.
PROBE_TICKS = 12
PROBE_FRACTION = 0.25
#: Closed gaps remembered per domain.
GAP_HISTORY = 512
#: How often a sensor's volatile state (temperature…) is refreshed, in seconds.
STATE_INTERVAL_S = 2.0
#: The sampler thread stores its readings of nonblocking sensors in batches of this many ticks
#: (and whenever anyone looks at the series): see :meth:`Sampler.sync`.
SYNC_TICKS = 8
#: Ticks the sampler thread can record before they are stored (a power of two, > 2 * SYNC_TICKS).
_RING = 64
_RING_MASK = _RING - 1
#: A window edge waits at least this long for a blocking sensor's read (thread hand-off and
#: GIL waits on a loaded machine), and at most ``min(EDGE_TIMEOUT_MAX_S, hang_timeout_s / 4)``.
EDGE_TIMEOUT_MIN_S = 0.005
EDGE_TIMEOUT_MAX_S = 0.05
#: Round trips remembered per blocking sensor for the edge timeout (about 6 s at 10 Hz).
ROUND_TRIPS_KEPT = 64
_GOLDEN = 0.6180339887498949
_INF = math.inf


class PhaseLock:
    """Estimates when a periodically updating counter updates, from the reads that saw it move.

    The phase of the updates within ``period_s`` is tracked as a set of feasible
    bins.  A read pair ``(a, b]`` shorter than the period in which the counter moved
    says an update fell in ``(a, b]``; one in which it did not move says none did.
    Conflicting evidence (the real period differs from the nominal one, or the
    counter stalled) resets the set to the latest evidence.
    """

    BINS = 100

    def __init__(self, period_s: float):
        self.period_s = float(period_s)
        self._full = (1 << self.BINS) - 1
        self.feasible = self._full
        self._cache: tuple[int, float, int] | None = None
        self.resets = 0
        self._conflicts = 0

    def _bin(self, t: float) -> int:
        return int((t % self.period_s) / self.period_s * self.BINS) % self.BINS

    def _span(self, i: int, j: int) -> int:
        """Bits i..j inclusive, circularly."""
        n = self.BINS
        if i <= j:
            return ((1 << (j - i + 1)) - 1) << i
        return (((1 << (n - i)) - 1) << i) | ((1 << (j + 1)) - 1)

    def moved(self, a: float, b: float) -> None:
        """The counter changed between reads at ``a`` and ``b``."""
        if not 0 < b - a < self.period_s:
            return
        arc = self._span(self._bin(a), self._bin(b))
        self._apply(self.feasible & arc, arc)

    def still(self, a: float, b: float) -> None:
        """The counter did not change between reads at ``a`` and ``b`` (and it is known to be counting)."""
        if not 0 < b - a < self.period_s:
            return
        i, j = self._bin(a), self._bin(b)
        if (j - i) % self.BINS < 2:
            return
        inner = self._span((i + 1) % self.BINS, (j - 1) % self.BINS)
        self._apply(self.feasible & ~inner & self._full, self._full & ~inner)

    def _apply(self, new: int, fallback: int) -> None:
        """Keep ``new``; if it contradicts everything so far, ignore it unless it keeps happening."""
        if new:
            self.feasible = new
            self._conflicts = 0
            return
        self._conflicts += 1
        if self._conflicts >= 3:  # the real period differs from the nominal one: start over
            self.resets += 1
            self._conflicts = 0
            self.feasible = fallback

    def _estimate(self) -> tuple[float, int]:
        """(phase in seconds, width of the feasible run in bins), cached per feasible set."""
        f = self.feasible
        if self._cache is not None and self._cache[0] == f:
            return self._cache[1], self._cache[2]
        n = self.BINS
        bits = [(f >> k) & 1 for k in range(n)]
        best_len, best_start = 0, 0
        if all(bits):
            best_len, best_start = n, 0
        else:
            start = next(k for k in range(n) if not bits[k])  # begin scanning after a zero
            run = 0
            for step in range(1, n + 1):
                k = (start + step) % n
                if bits[k]:
                    run += 1
                    if run > best_len:
                        best_len, best_start = run, (k - run + 1) % n
                else:
                    run = 0
        centre = (best_start + best_len / 2.0) % n
        phase = centre / n * self.period_s
        self._cache = (f, phase, best_len)
        return phase, best_len

    @property
    def locked(self) -> bool:
        """True when the update phase is known to within a twentieth of the period."""
        return self._estimate()[1] <= self.BINS // 20

    @property
    def uncertainty_s(self) -> float:
        return self._estimate()[1] / self.BINS * self.period_s

    def last_update(self, t: float) -> float:
        """Estimated time of the last counter update at or before ``t``."""
        if self.feasible == self._full:
            return t - self.period_s / 2.0
        phase, _ = self._estimate()
        return phase + math.floor((t - phase) / self.period_s) * self.period_s


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
        "gap_open", "gaps", "gap_seq", "gap_closed_s", "_fast", "now_w",
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
        #: :meth:`power_now_w` as of the last read when the short path could tell it, else None.
        self.now_w: float | None = None

    # -- gaps -------------------------------------------------------------------------------
    def bad(self, t: float, reason: str) -> None:
        self._fast = False
        self.now_w = None
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
            self.now_w = (slope if slope > 0.0 else 0.0) if seg >= self.power_span_s else None
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
        self.now_w = p
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
        self.now_w = None

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
        if lock.feasible == lock._full:
            return
        phase, width = lock._estimate()
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

    # -- queries ----------------------------------------------------------------------------
    def unmoved_power_w(self, now: float) -> float | None:
        """Power to assume for a window in which the counter did not move.

        The energy of the last counter step over the time between the last two steps; once the
        counter has been still for more than twice that spacing, the average since the
        step before (which decays towards zero for a counter that stopped counting).
        """
        if self.stale and len(self.points) >= 2:
            return self.stale_slope_w()
        if self.mode != "counter":
            return self.recent_power_w()
        steps = self._last_steps()
        if steps is None:
            return self.recent_power_w()
        (t0, e0), (t1, e1) = steps
        spacing = t1 - t0
        if spacing <= 0:
            return self.recent_power_w()
        if now - t1 <= 2 * spacing:
            return (e1 - e0) / spacing
        return (e1 - e0) / (now - t0)

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

    def stale_slope_w(self) -> float:
        """Mean power over the last two counter updates (about two update periods).

        Used to extrapolate a slowly updating counter past its last update.  Two periods rather
        than one: a load that alternates at about the update rate then averages out instead of
        being extrapolated with the opposite phase, while a ramp is lagged by only half a period.
        """
        pts = self.points
        n = len(pts)
        if n < 2:
            return max(0.0, self.last_power_w or 0.0)
        k = 3 if n >= 3 and pts[-1][0] - pts[-3][0] <= 2.5 * self.info.update_period_s else 2
        t1, e1 = pts[-1][0], pts[-1][1]
        stop = min(n, 64)
        while k < stop and t1 - pts[-k][0] < self.power_span_s:
            k += 1  # never a slope over points closer than power_span_s
        t0, e0 = pts[-k][0], pts[-k][1]
        return max(0.0, (e1 - e0) / (t1 - t0)) if t1 > t0 else 0.0

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

    def mean_power_w(self, span_s: float) -> float | None:
        """Mean power over the newest points that span at least ``span_s`` (all of them if they span
        less), from the cumulative energy; None without two points or for polled power.  Unlike
        :meth:`stale_slope_w` it does not hang on the last step, so one step placed too early
        or too late (a flat stretch) weighs only its share."""
        if self.mode != "counter" or len(self.points) < 2:
            return None
        return self._slope_back(span_s, 256)[0]

    def recent_power_w(self) -> float | None:
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

    def energy_at(self, x: float) -> tuple[float | None, bool]:
        """Cumulative energy at time ``x``: ``(energy_j, final)``.

        ``final`` is True when later points bracket ``x`` (interpolated), False when it was
        extrapolated past the newest point (it may improve once more samples arrive).
        ``(None, True)`` when ``x`` is older than the buffer or nothing was read yet.
        While the domain is in a gap, extrapolation stops at the last good read.
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
            slope = self.stale_slope_w() if len(pts) >= 2 else (self.last_power_w or 0.0)
            if not self.stale:
                slope = self.recent_power_w() or 0.0
            return e_last + max(0.0, slope) * d, False
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

    def _trend_w_per_s(self) -> float:
        pts = self.points
        t1, p1 = pts[-1][0], pts[-1][2]
        want = max(self.shift_s, 0.05)
        for k in range(2, min(len(pts), 256) + 1):
            t0, p0 = pts[-k][0], pts[-k][2]
            if t1 - t0 >= want:
                return (p1 - p0) / (t1 - t0)
        t0, p0 = pts[0][0], pts[0][2]
        return (p1 - p0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def timing_settled(self) -> bool:
        """False while a slowly updating counter's timing is still being found out: until a read has
        shown that it updates as slowly as declared (:attr:`stale_shown`) or that it updates faster
        (then read times are used), and while its update phase is being estimated."""
        return self.phase is None or (self.stale_shown and self.phase.locked)

    def power_now_w(self) -> float | None:
        """Latest power: the counter's recent slope, or the last polled reading.

        A counter's slope is taken over its last segment if that is at least :attr:`power_span_s`
        long, else over the newest points that span at least one update period
        (:meth:`recent_power_w`): never over two points that the update-time estimate put close
        together, whose slope can be anything up to megawatts.
        """
        if self.mode == "counter":
            pts = self.points
            if len(pts) >= 2 and pts[-1][0] - pts[-2][0] >= self.power_span_s:
                return max(0.0, pts[-1][2])  # the last segment is long enough to be a fair slope
            if len(pts) >= 2 and pts[-1][0] - pts[0][0] < self.power_span_s:
                p = self.last_power_w  # too little history for a slope: the sensor's own reading, if any
            else:
                p = self.recent_power_w()
            return None if p is None else max(0.0, p)
        return self.last_power_w


class _SensorSlot:
    """A sensor with its domains' series, and for a blocking sensor its reader thread.

    A blocking sensor's reader thread sleeps on ``wake`` (a held lock).  Whoever dispatches a read
    first takes ``done`` without waiting (it is free only while no read is in flight), then
    releases ``wake``; the reader releases ``done`` when the read has been ingested.  So at most
    one read of a sensor is in flight, a tick never waits for one, and a window edge can wait for
    one with a timeout.
    """

    __slots__ = ("sensor", "domains", "series", "targets", "read_values", "tuples", "inline", "sample",
                 "values_at", "wake", "done", "busy_since", "hung", "edge", "state", "state_t", "reader",
                 "round_trips_s")

    def __init__(self, sensor: Sensor):
        self.sensor = sensor
        self.domains = sensor.domains()
        self.series: list[tuple[str, DomainSeries]] = []  # (domain, series), filled by the sampler
        self.targets: tuple[DomainSeries, ...] = ()  # the same series, in the order of domains()
        #: The sensor's ``read_values`` (a tuple of (energy_j, power_w) pairs in domain order)
        #: if it has one: cheaper than ``read`` on every sample.
        rv = getattr(sensor, "read_values", None)
        self.read_values = rv if callable(rv) else None
        #: Sensors that compute in-process and cannot block (``nonblocking = True`` with ``sample``
        #: and ``values_at``: the replay sensor, the cpu-model estimate) are sampled on the sampler
        #: thread itself (and at window edges on the caller's thread), and their readings worked out
        #: later by whoever stores them; hardware sensors get a reader thread so that a hung driver
        #: call never stalls the others, nor a window edge.
        va = getattr(sensor, "values_at", None)
        self.inline = bool(getattr(sensor, "nonblocking", False)) and callable(va)
        self.values_at = va if self.inline else None
        sample = getattr(sensor, "sample", None) if self.inline else None
        self.sample = sample if callable(sample) else None
        #: Readings come as one (energy_j, power_w) pair per domain, in the order of domains().
        self.tuples = self.inline or self.read_values is not None
        self.wake = threading.Lock()
        self.wake.acquire()
        self.done = threading.Lock()
        self.busy_since: float | None = None  # sampler clock, set when a read is dispatched
        self.hung = False
        self.edge = False  # the read in flight was asked for by a window edge
        self.state: dict[str, str] = {}
        self.state_t = -math.inf
        self.reader: threading.Thread | None = None
        #: Recent times from dispatch to stored reading (seconds), for the edge timeout.
        self.round_trips_s: deque[float] = deque(maxlen=ROUND_TRIPS_KEPT)


class Sampler:
    """Reads sensors on a daemon thread into bounded per-domain series.

    Args:
        sensors: The sensors to read.
        interval_s: Sampling interval (default 0.1 s, 10 Hz).
        clock: Monotonic clock for every timestamp.
        buffer_s: Seconds of points kept per domain (memory is bounded by this).
        hang_timeout_s: A read in flight longer than this is a ``hung`` gap
            (default ``min(1, max(2 * interval_s, 0.25))``: twice the interval, at least a
            quarter second so that a loaded machine is not mistaken for a hung sensor).
        on_tick: Called once per tick with the tick's clock time and the store lock held,
            right after that tick's readings are stored (see :meth:`sync`: in batches, on the
            sampler thread or on whichever thread asks for the series first).
    """

    def __init__(
        self,
        sensors: Iterable[Sensor],
        *,
        interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        buffer_s: float = DEFAULT_BUFFER_S,
        hang_timeout_s: float | None = None,
        on_tick: Callable[[float], None] | None = None,
        capacity: int | None = None,
    ):
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = float(interval_s)
        self.clock = clock
        self.hang_timeout_s = (
            float(hang_timeout_s) if hang_timeout_s is not None else min(1.0, max(2 * interval_s, 0.25))
        )
        self.on_tick = on_tick
        #: Longest a window edge waits for blocking sensors (all of them together) before using
        #: their buffers and recording a gap: twice a sensor's usual round trip, at least
        #: :data:`EDGE_TIMEOUT_MIN_S`, at most this.
        self.edge_wait_s = min(EDGE_TIMEOUT_MAX_S, self.hang_timeout_s / 4)
        self.capacity = int(capacity) if capacity else max(64, int(math.ceil(buffer_s / interval_s)) * 2)
        self.lock = threading.RLock()  # the store lock: series, gaps, anything hooked on ticks
        self.slots = [_SensorSlot(s) for s in sensors]
        self.series: dict[str, DomainSeries] = {}
        self.domain_slot: dict[str, _SensorSlot] = {}
        for slot in self.slots:
            for d in slot.domains:
                if d.name in self.series:
                    raise ValueError(f"two sensors report domain {d.name!r}")
                ds = DomainSeries(d, self.capacity)
                self.series[d.name] = ds
                self.domain_slot[d.name] = slot
                slot.series.append((d.name, ds))
            slot.targets = tuple(ds for _, ds in slot.series)
        self._inline = [s for s in self.slots if s.inline]
        self._readers = [s for s in self.slots if not s.inline]
        # What the sampler thread records at each tick and :meth:`sync` stores: tick ``n`` is at
        # index ``n & _RING_MASK`` of the tick times and of one list of samples per nonblocking
        # sensor (its ``sample()``, or the exception it raised).  The thread appends, advances
        # ``_n``, and never overtakes the unstored ticks (it syncs first once SYNC_TICKS of them wait).
        self._times: list[float] = [0.0] * _RING
        self._samples: list[list] = [[None] * _RING for _ in self._inline]
        self._inline_samples = tuple(zip(self._inline, self._samples))  # what sync() goes through
        self._captures = tuple((slot.sample, buf) for slot, buf in self._inline_samples if slot.sample is not None)
        self._n = 0  # ticks recorded
        self._synced = 0  # ticks stored
        #: Time of the last nonblocking readings stored (by sync() or an edge): older ones are late.
        self._inline_t = -_INF
        self._stop_t = _INF  # clock time of stop(): ticks recorded after it are dropped
        self._stopped = True
        #: Dither the tick times only where a counter updates slowly (PhaseLock needs varied phases).
        self._dither = any(ds.stale for ds in self.series.values())
        #: Interval of the first :data:`PROBE_TICKS` ticks after a start, where a counter updates
        #: slowly and the interval is longer than a fraction of its period (else None).
        probe = min((PROBE_FRACTION * ds.period_s for ds in self.series.values() if ds.stale), default=None)
        self._probe_s = probe if probe is not None and probe < self.interval_s else None
        self._thread: threading.Thread | None = None
        self._generation = 0
        self.started_at: float | None = None
        self._thread_cpu_s: dict[int, float] = {}
        self.tick_errors: deque[str] = deque(maxlen=32)

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def ticks(self) -> int:
        """Ticks taken so far (all starts together)."""
        return self._n

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    def start(self) -> None:
        """Start the sampler thread (and one reader per blocking sensor).  Idempotent."""
        if self.running:
            return
        with self.lock:
            self._generation += 1
            gen = self._generation
            self._stopped = False
            self._stop_t = _INF
        now = self.clock()
        if self.started_at is None:
            self.started_at = now
            for slot in self.slots:
                start = getattr(slot.sensor, "start", None)
                if callable(start):
                    start(now)
        for slot in self._readers:
            slot.wake = threading.Lock()
            slot.wake.acquire()
            slot.done = threading.Lock()
            slot.busy_since = None
            slot.hung = False
            slot.reader = threading.Thread(
                target=self._reader_loop, args=(slot, gen, slot.wake, slot.done),
                name=f"{THREAD_NAME}-read-{slot.sensor.name}", daemon=True,
            )
            slot.reader.start()
        self._thread = threading.Thread(target=self._loop, args=(gen,), name=THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop sampling.  Idempotent, and prompt even if a sensor hangs.

        No tick taken after this is called lands.  The sampler thread itself sleeps
        uninterruptibly between ticks (the cheapest wait there is) and exits when it next
        wakes, within one interval; idle reader threads are woken and joined (up to
        ``timeout_s``, at most 50 ms); a reader stuck in a hung read is left behind (a daemon).
        """
        with self.lock:
            self._stopped = True
            self._stop_t = self.clock()
            self.sync()
        deadline = time.monotonic() + timeout_s
        idle = []
        for slot in self._readers:
            if slot.done.acquire(blocking=False):  # no read in flight: wake the reader so it exits
                slot.wake.release()
                idle.append(slot)
        for slot in idle:
            r = slot.reader
            if r is not None and r is not threading.current_thread():
                r.join(max(0.0, min(0.05, deadline - time.monotonic())))

    # -- reading ----------------------------------------------------------------------------
    def _ingest(self, slot: _SensorSlot, result, error: BaseException | None, t0: float, t1: float) -> None:
        """Store one read of ``slot``'s sensor (the read call ran from ``t0`` to ``t1``).

        ``result`` is what ``read_values()`` returned if the sensor has it, else what ``read()``
        returned.  Caller holds the store lock.  A read that raised, took longer than
        ``hang_timeout_s`` or returned something malformed becomes a gap in every domain of the
        sensor; a domain missing from a ``read()`` mapping becomes a gap in that domain.
        """
        t = 0.5 * (t0 + t1)
        reason = None
        if error is not None:
            reason = f"raised: {type(error).__name__}: {error}"[:200]
        elif t1 - t0 > self.hang_timeout_s:
            reason = f"hung: read took {t1 - t0:.2f} s"
        elif slot.tuples:
            if isinstance(result, tuple) and len(result) == len(slot.targets):
                for s, r in zip(slot.targets, result):
                    if r is None:
                        s.bad(t, "missing from reading")
                    else:
                        s.ingest(t, r, t0, t1)
                return
            reason = "malformed reading"
        elif isinstance(result, dict):
            for name, s in slot.series:
                r = result.get(name)
                if r is None:
                    s.bad(t, "missing from reading")
                else:
                    s.ingest(t, r, t0, t1)
            return
        else:
            reason = "missing from reading"
        for s in slot.targets:
            s.bad(t, reason)

    @staticmethod
    def _call_sensor(slot: _SensorSlot):
        rv = slot.read_values
        return rv() if rv is not None else slot.sensor.read()

    def _store_inline(self, slot: _SensorSlot, t: float, sample) -> None:
        """Work out and store a nonblocking sensor's reading at ``t`` from its ``sample`` there.
        Caller holds the store lock, and calls in time order."""
        if isinstance(sample, BaseException):
            self._ingest(slot, None, sample, t, t)
            return
        try:
            values = slot.values_at(t, sample)
        except Exception as exc:  # any failure of a sensor is recorded as a gap, never hidden
            values, error = None, exc
        else:
            error = None
        self._ingest(slot, values, error, t, t)

    def _edge_inline(self) -> None:
        """Sample the nonblocking sensors on this thread for a window edge, then store the readings.

        The samples come first (an edge is *now*: storing the sampler's pending ticks first would
        put a millisecond between the edge and its samples), then the pending ticks, then these
        readings.  Readings are stored in time order only: of two edges on two threads, the later
        one's readings stand for both (the series interpolates the earlier one's instant).
        """
        t = self.clock()
        taken = []
        for slot in self._inline:
            fn = slot.sample
            if fn is None:
                x = None
            else:
                try:
                    x = fn()
                except Exception as exc:  # recorded as a gap when stored
                    x = exc
            taken.append((slot, x))
        with self.lock:
            self.sync()
            if t > self._inline_t:
                self._inline_t = t
                for slot, x in taken:
                    self._store_inline(slot, t, x)

    def _read_blocking(self, slot: _SensorSlot, gen: int, tick: bool) -> None:
        """Read a blocking sensor (on its reader thread) and store it unless the sampler moved on."""
        clock = self.clock
        t0 = clock()
        try:
            result = self._call_sensor(slot)
            error = None
        except Exception as exc:  # any failure of a sensor is recorded as a gap, never hidden
            result, error = None, exc
        t1 = clock()
        with self.lock:
            if gen != self._generation or (tick and self._stopped):
                return  # a read that outlived stop() or a restart: not this sampler's any more
            self._ingest(slot, result, error, t0, t1)
        if tick and error is None and t1 - slot.state_t >= STATE_INTERVAL_S:
            self._refresh_state(slot, t1)

    @staticmethod
    def _refresh_state(slot: _SensorSlot, t: float) -> None:
        slot.state_t = t
        try:
            slot.state = dict(slot.sensor.state())
        except Exception as exc:  # state is optional decoration: record why it is missing
            slot.state = {"state_error": repr(exc)[:200]}

    def _reader_loop(self, slot: _SensorSlot, gen: int, wake: threading.Lock, done: threading.Lock) -> None:
        clock = self.clock
        while True:
            wake.acquire()
            if self._stopped or gen != self._generation:
                if gen == self._generation:
                    slot.busy_since = None
                done.release()
                return
            since, tick = slot.busy_since, not slot.edge
            self._read_blocking(slot, gen, tick)
            if since is not None:
                slot.round_trips_s.append(min(clock() - since, self.edge_wait_s))
            slot.busy_since = None
            slot.hung = False
            done.release()
            self._thread_cpu_s[threading.get_ident()] = time.thread_time()
            if self._stopped or gen != self._generation:
                return  # stopped while this read was in flight

    def _edge_oneshot(self, slot: _SensorSlot, gen: int, done: threading.Lock) -> None:
        try:
            self._read_blocking(slot, gen, tick=False)
        finally:
            slot.busy_since = None
            slot.hung = False
            done.release()

    def _dispatch_edge(self, slot: _SensorSlot, now: float) -> None:
        """Start an edge read of a blocking sensor; the caller holds ``slot.done``."""
        slot.busy_since = now
        slot.edge = True
        if not self._stopped:
            slot.wake.release()
        else:  # no reader thread any more (a window ended after stop()): a one-off thread
            threading.Thread(
                target=self._edge_oneshot, args=(slot, self._generation, slot.done),
                name=f"{THREAD_NAME}-edge-{slot.sensor.name}", daemon=True,
            ).start()

    def edge_timeout_s(self) -> float:
        """How long a window edge waits for the blocking sensors' reads before using their buffers.

        Twice the longest of a sensor's last :data:`ROUND_TRIPS_KEPT` round trips (dispatch to
        stored reading), at least :data:`EDGE_TIMEOUT_MIN_S` and at most :attr:`edge_wait_s`, which
        is also the bound until a sensor has been read a few times.  The longest rather than the
        usual round trip: some reads are slow every time (an H200's NVML energy counter takes
        3-15 ms per read), and an edge that gives up on a read that was merely slow records a
        gap and loses the energy since the last reading.
        """
        longest = 0.0
        for slot in self._readers:
            rts = slot.round_trips_s
            if len(rts) < 3:
                return self.edge_wait_s
            longest = max(longest, max(rts))
        return min(self.edge_wait_s, max(EDGE_TIMEOUT_MIN_S, 2.0 * longest))

    def edge_read(self) -> None:
        """Read every healthy sensor now (window edges); returns within :meth:`edge_timeout_s`.

        Nonblocking sensors are read on the calling thread.  Blocking sensors are read by their
        reader threads, all at once, and waited for; a read already in flight is waited for and
        stands for the edge.  A sensor already marked hung is skipped.  One whose read does not
        come back in time is marked hung and its domains get a gap from their last good read
        (the window edge then uses the buffer, which stops at that read): a sensor that hangs
        for the first time during an edge costs the caller at most the timeout.
        """
        readers = self._readers
        if not readers:
            self._edge_inline()
            return
        clock = self.clock
        now = clock()
        gen = self._generation
        dispatched: list[_SensorSlot] = []
        in_flight: list[_SensorSlot] = []
        for slot in readers:
            if slot.hung:
                continue
            if slot.done.acquire(blocking=False):
                self._dispatch_edge(slot, now)
                dispatched.append(slot)
            else:
                in_flight.append(slot)
        if self._inline:
            self._edge_inline()
        bound = self.edge_timeout_s()
        deadline = now + bound
        late: list[_SensorSlot] = []
        for slot in in_flight + dispatched:
            left = deadline - clock()
            if slot.done.acquire(timeout=left) if left > 0 else slot.done.acquire(blocking=False):
                slot.done.release()
            else:
                late.append(slot)
        if late:
            t = clock()
            with self.lock:
                for slot in late:
                    slot.hung = True
                    for _, s in slot.series:
                        s.bad(t, f"hung: edge read not back after {bound * 1e3:.0f} ms")

    def _loop(self, gen: int) -> None:
        """Tick every ``interval_s`` until stopped.

        Sleeps for a relative duration (the interval, less the usual wake-up and tick overhead,
        so the rate stays at 1 / interval) rather than until absolute deadlines: on this kind of
        machine a wake-up locked to a fixed 100 ms grid cost measurably more CPU.  With a slowly
        updating counter the durations are dithered (a golden-ratio sequence over the interval),
        so that ticks fall at all phases of the counter's updates.  The first :data:`PROBE_TICKS`
        ticks after a start come every ``PROBE_FRACTION`` of such a counter's period instead, where
        that is shorter than the interval: dense enough that a counter updating faster than declared
        is seen moving on consecutive reads (and one that does not, standing still between them)
        within a fraction of a second, before the first window depends on it.
        """
        interval = self.interval_s
        dither = self._dither
        probe_s = self._probe_s
        probe_left = PROBE_TICKS if probe_s is not None else 0
        ident = threading.get_ident()
        sleep, monotonic, thread_time = time.sleep, time.monotonic, time.thread_time
        clock = self.clock
        readers = self._readers
        times, captures = self._times, self._captures
        k = 0
        g_prev = 0.0
        overhead = 0.0
        t_prev = monotonic()
        while True:
            k += 1
            if probe_left:
                probe_left -= 1
                want = probe_s
            elif dither:
                g = (k * _GOLDEN) % 1.0
                want = interval * (1.0 + g - g_prev)
                g_prev = g
            else:
                want = interval
            nap = want - overhead if want > overhead else 0.0
            sleep(nap)
            # The tick.  It runs ten times a second for as long as the kernel lives, and a wake-up
            # finds the CPU's caches cold, so every kind of operation it does costs
            # (bench/sampler_overhead.py): it records the time and each nonblocking sensor's
            # sample() in preallocated lists, dispatches the blocking sensors' reads, and leaves
            # what the samples mean (series, gaps, the on_tick hook) to sync(), every SYNC_TICKS
            # ticks or as soon as anyone looks.  No lock and no allocation of its own.
            if self._stopped or gen != self._generation:
                self._thread_cpu_s[ident] = thread_time()
                return
            now = clock()
            if readers:
                self._dispatch_readers(now)
            n = self._n
            i = n & _RING_MASK
            times[i] = now
            for fn, buf in captures:
                try:
                    buf[i] = fn()
                except Exception as exc:  # any failure of a sensor is recorded as a gap, never hidden
                    buf[i] = exc
            self._n = n = n + 1
            if n - self._synced >= SYNC_TICKS:
                with self.lock:
                    self.sync()
            if not n & 31:
                self._thread_cpu_s[ident] = thread_time()
            t = monotonic()
            late = t - t_prev - nap
            if late < interval:  # (a longer stall is not overhead: missed ticks are skipped, not burst)
                overhead += 0.125 * (late - overhead)
            t_prev = t

    def _dispatch_readers(self, now: float) -> None:
        """Start a read on every idle blocking sensor; mark the ones in flight too long as hung."""
        for slot in self._readers:
            if slot.done.acquire(blocking=False):
                slot.busy_since = now
                slot.edge = False
                slot.wake.release()
                continue
            since = slot.busy_since
            if since is not None and not slot.hung and now - since > self.hang_timeout_s:
                slot.hung = True
                with self.lock:
                    self.sync()
                    for s in slot.targets:
                        s.bad(now, f"hung: read in flight > {self.hang_timeout_s:.2f} s")

    def sync(self) -> None:
        """Store the ticks the sampler thread has recorded but not stored yet, in order: each
        nonblocking sensor's reading worked out from its sample, then the ``on_tick`` hook, as if
        it had happened then.

        Caller holds the store lock.  Everything that reads the series calls this first (window
        edges, :class:`~ipython_energy.meter.Meter` queries, :meth:`stop`), so nobody sees them
        behind by more than the reads in flight.  A tick recorded before a window edge's readings
        but counted after them is late and dropped, as is one taken after :meth:`stop`.
        """
        n = self._n  # (the sampler thread may record more meanwhile; they wait for the next sync)
        k = self._synced
        if k == n:
            return
        hook = self.on_tick
        times = self._times
        inline = self._inline_samples
        last, stop_t = self._inline_t, self._stop_t
        while k < n:
            i = k & _RING_MASK
            k += 1
            t = times[i]
            if t <= last or t > stop_t:
                continue
            last = t
            for slot, samples in inline:
                self._store_inline(slot, t, samples[i])
            if hook is not None:
                hook(t)
        self._synced = n
        self._inline_t = last
        for slot in self._inline:
            if last - slot.state_t >= STATE_INTERVAL_S:
                self._refresh_state(slot, last)

    # -- queries ----------------------------------------------------------------------------
    @property
    def domains(self) -> list[DomainInfo]:
        return [d for slot in self.slots for d in slot.domains]

    def states(self) -> dict[str, dict[str, str]]:
        """Cached volatile state per domain (refreshed by the readers every couple of seconds)."""
        out: dict[str, dict[str, str]] = {}
        for slot in self.slots:
            if slot.state:
                for d in slot.domains:
                    out[d.name] = slot.state
        return out

    def cpu_time_s(self) -> float:
        """CPU seconds used so far by the sampler thread and the reader threads."""
        return sum(self._thread_cpu_s.values())

    def threads(self) -> list[threading.Thread]:
        out = [self._thread] if self._thread is not None else []
        out += [s.reader for s in self.slots if s.reader is not None]
        return out
