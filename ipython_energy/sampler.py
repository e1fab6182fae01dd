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
read on the sampler thread itself); a sensor whose previous read is still in flight is not
dispatched again, and once it has been in flight longer than ``hang_timeout_s``
its domains get a ``hung`` gap.  A hung sensor therefore never stalls the others,
and :meth:`Sampler.stop` returns promptly.  Readings that raise, are NaN or
negative, or make a counter go backwards become gaps too.

Tick times are dithered within each interval (a golden-ratio sequence over the whole
interval) so that a counter updating at about the sampling rate is observed at
varying phases; that is what lets :class:`PhaseLock` find its update times.
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
#: Closed gaps remembered per domain.
GAP_HISTORY = 512
#: How often a sensor's volatile state (temperature…) is refreshed, in seconds.
STATE_INTERVAL_S = 2.0
_GOLDEN = 0.6180339887498949


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

    def __init__(self, info: DomainInfo, capacity: int):
        self.info = info
        # (tau, energy_j, power_w, read_t): tau is when the value held (update time / shifted
        # power time); power_w is the reading (polled) or the slope from the previous point (counter)
        self.points: deque[tuple[float, float, float, float]] = deque(maxlen=capacity)
        self.mode: str | None = None  # "counter" or "polled", fixed by the first good reading
        self.stale = info.update_period_s > FRESH_PERIOD_S
        self.phase = PhaseLock(info.update_period_s) if self.stale else None
        self.shift_s = info.averaging_s / 2.0
        self.last_read: tuple[float, float, float, float] | None = None  # (t, energy, t_lo, t_hi) of the last good counter read
        self.last_good_t: float | None = None
        self.last_power_w: float | None = None  # the sensor's own power reading, if any
        self.last_increment_j = 0.0
        self.increases = 0  # how many good reads saw the counter go up (for "did not move")
        self.offset_j = 0.0  # rebasing after a counter reset
        self.last_raw_j: float | None = None
        self._glitch: tuple[float, float] | None = None
        self.good_reads = 0
        self._timed_with: tuple[float, float] | None = None  # (phase, width) used to place the points
        self._last_move: tuple[float, float] | None = None  # read bracket of the last counter change
        self._fast_evidence = 0
        self.faster_than_nominal = False
        self._inc: deque[tuple[float, float]] = deque(maxlen=2)  # (read time, energy) of the last increases
        # gaps
        self.gap_open: tuple[float, str] | None = None
        self.gaps: deque[tuple[int, float, float, str]] = deque(maxlen=GAP_HISTORY)
        self.gap_seq = 0
        self.gap_closed_s = 0.0

    # -- gaps -------------------------------------------------------------------------------
    def bad(self, t: float, reason: str) -> None:
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
        self.good_reads += 1

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
        e, p = r.energy_j, r.power_w
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
        self.increases += 1
        self._good(t)

    def _ingest_counter(self, t: float, raw: float, t_lo: float, t_hi: float) -> None:
        last = self.last_raw_j
        if last is not None and raw < last:
            g = self._glitch
            if g is not None and raw >= g[1]:
                # two consistent reads below the old value: the counter was reset. Rebase.
                self.offset_j += last - g[1]
                self._glitch = None
            else:
                self._glitch = (t, raw)
                self.bad(t, "decreasing counter")
                return
        else:
            self._glitch = None
        self.last_raw_j = raw
        energy = raw + self.offset_j
        pts = self.points
        prev = self.last_read
        moved = prev is not None and energy > prev[1]
        if moved:
            lm = self._last_move
            if self.stale and lm is not None and lm[1] == prev[3] and t_hi - lm[0] < 0.8 * self.info.update_period_s:
                # two changes within less than one nominal period: this counter is faster than declared
                self._fast_evidence += 1
                if self._fast_evidence >= 3:
                    self.stale = False
                    self.phase = None
                    self.faster_than_nominal = True
            self._last_move = (prev[2], t_hi)
            self._inc.append((t, energy))
        elif prev is None:
            self._inc.append((t, energy))
        if self.stale:
            lock = self.phase
            if prev is not None:
                if moved:
                    lock.moved(prev[2], t_hi)  # an update fell after the last read began, before this one ended
                elif self.last_increment_j > 0:
                    lock.still(prev[3], t_lo)  # none fell between the end of the last read and the start of this
            self._retime()
            tau = lock.last_update(t)
            if pts:
                t_last = pts[-1][0]
                if not moved and tau <= t_last + 0.5 * self.info.update_period_s:
                    self.last_read = (t, energy, t_lo, t_hi)
                    self._good(t)
                    return  # same update as the last point: nothing new
                if tau <= t_last + 0.5 * self.info.update_period_s:
                    # it moved, yet the phase estimate puts this read in the last point's update
                    # (a read right at an update boundary, within the estimate's uncertainty):
                    # this is the next update, one period on, and not after this read
                    tau = min(t_last + self.info.update_period_s, t_hi)
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
        if moved:
            self.increases += 1
        self.last_read = (t, energy, t_lo, t_hi)
        self._good(t)

    def _retime(self, depth: int = 32) -> None:
        """Re-place the newest points when the phase estimate has moved (mostly right after start)."""
        lock = self.phase
        if lock.feasible == lock._full:
            return
        phase, width = lock._estimate()
        old = self._timed_with
        bin_s = self.info.update_period_s / lock.BINS
        if old is not None and abs(phase - old[0]) < 2 * bin_s and width >= old[1] / 2:
            return
        self._timed_with = (phase, width)
        pts = self.points
        n = len(pts)
        k0 = max(0, n - depth)
        if k0 > 0:
            prev_tau, prev_e = pts[k0 - 1][0], pts[k0 - 1][1]
        else:
            prev_tau, prev_e = -math.inf, None
        for i in range(k0, n):
            _, e, p, tr = pts[i]
            tau = max(min(lock.last_update(tr), tr), prev_tau + 1e-6)
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
        if self.mode != "counter" or len(self._inc) < 2:
            return self.recent_power_w()
        (t0, e0), (t1, e1) = self._inc
        spacing = t1 - t0
        if spacing <= 0:
            return self.recent_power_w()
        if now - t1 <= 2 * spacing:
            return (e1 - e0) / spacing
        return (e1 - e0) / (now - t0)

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
        t0, e0 = pts[-k][0], pts[-k][1]
        t1, e1 = pts[-1][0], pts[-1][1]
        return max(0.0, (e1 - e0) / (t1 - t0)) if t1 > t0 else 0.0

    def recent_power_w(self) -> float | None:
        """Power over the most recent stretch of at least one update period (or the last reading)."""
        pts = self.points
        if self.mode == "polled":
            return self.last_power_w
        if len(pts) < 2:
            return self.last_power_w
        base = max(self.info.update_period_s, 0.02)
        t1, e1 = pts[-1][0], pts[-1][1]
        for k in range(2, min(len(pts), 64) + 1):
            t0, e0 = pts[-k][0], pts[-k][1]
            if t1 - t0 >= base:
                return (e1 - e0) / (t1 - t0)
        t0, e0 = pts[0][0], pts[0][1]
        return (e1 - e0) / (t1 - t0) if t1 > t0 else self.last_power_w

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
        """False while a slowly updating counter's update phase is still being estimated."""
        return self.phase is None or self.phase.locked

    def power_now_w(self) -> float | None:
        """Latest power: the counter's recent slope, or the last polled reading."""
        if self.mode == "counter" and not self.stale:
            pts = self.points
            if len(pts) >= 2 and pts[-1][0] - pts[-2][0] >= 0.02:
                return max(0.0, pts[-1][2])  # the last segment is long enough to be a fair slope
        if self.mode == "counter":
            if self.stale and len(self.points) >= 2:
                return max(0.0, self.points[-1][2])
            p = self.recent_power_w()
            return None if p is None else max(0.0, p)
        return self.last_power_w


class _StopSignal:
    """An Event whose ``wait(timeout)`` is a single lock acquire.

    The sampler sleeps on it ten times a second; a bare lock wait costs about a third less
    CPU per wake-up than ``threading.Event.wait`` and is interrupted just as promptly.
    """

    def __init__(self):
        self._event = threading.Event()
        self._gate = threading.Lock()
        self._gate.acquire()
        self._set_lock = threading.Lock()

    def set(self) -> None:
        with self._set_lock:
            if not self._event.is_set():
                self._event.set()
                self._gate.release()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``; True as soon as the signal is set."""
        if self._gate.acquire(timeout=max(0.0, timeout_s)):
            self._gate.release()
            return True
        return self._event.is_set()


class _SensorSlot:
    """A sensor with its read lock, reader thread and in-flight bookkeeping."""

    def __init__(self, sensor: Sensor):
        self.sensor = sensor
        self.domains = sensor.domains()
        self.lock = threading.Lock()
        self.go = threading.Event()
        self.busy_since: float | None = None  # sampler clock, set when a read is dispatched
        self.hung = False
        self.state: dict[str, str] = {}
        self.state_t = -math.inf
        self.reader: threading.Thread | None = None
        #: Sensors that compute in-process and cannot block (``nonblocking = True``: the replay
        #: sensor, the cpu-model estimate) are read on the sampler thread itself; hardware
        #: sensors get a reader thread so that a hung driver call never stalls the others.
        self.inline = bool(getattr(sensor, "nonblocking", False))


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
        on_tick: Called on the sampler thread once per tick with the clock time.
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
        #: How long a window edge waits for a read already in flight on a sensor's reader (a
        #: normal read can be held up a few ms by the GIL) before using the buffer instead.
        self.edge_wait_s = min(0.05, self.hang_timeout_s / 4)
        self.capacity = int(capacity) if capacity else max(64, int(math.ceil(buffer_s / interval_s)) * 2)
        self.lock = threading.RLock()  # the store lock: series, gaps, anything hooked on ticks
        self.slots = [_SensorSlot(s) for s in sensors]
        self.series: dict[str, DomainSeries] = {}
        self.domain_slot: dict[str, _SensorSlot] = {}
        for slot in self.slots:
            for d in slot.domains:
                if d.name in self.series:
                    raise ValueError(f"two sensors report domain {d.name!r}")
                self.series[d.name] = DomainSeries(d, self.capacity)
                self.domain_slot[d.name] = slot
        self._stop = _StopSignal()
        self._thread: threading.Thread | None = None
        self._generation = 0
        self.ticks = 0
        self.started_at: float | None = None
        self._thread_cpu_s: dict[int, float] = {}
        self.tick_errors: deque[str] = deque(maxlen=32)

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def start(self) -> None:
        """Start the sampler thread (and one reader per sensor).  Idempotent."""
        if self.running:
            return
        self._stop = _StopSignal()
        self._generation += 1
        gen = self._generation
        now = self.clock()
        if self.started_at is None:
            self.started_at = now
            for slot in self.slots:
                start = getattr(slot.sensor, "start", None)
                if callable(start):
                    start(now)
        for slot in self.slots:
            if slot.inline:
                continue
            slot.go = threading.Event()
            slot.reader = threading.Thread(
                target=self._reader_loop, args=(slot, gen, self._stop, slot.go),
                name=f"{THREAD_NAME}-read-{slot.sensor.name}", daemon=True,
            )
            slot.reader.start()
        self._thread = threading.Thread(target=self._loop, args=(gen, self._stop), name=THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop sampling; returns within about ``timeout_s`` even if a sensor hangs.  Idempotent."""
        stop = self._stop
        stop.set()
        deadline = time.monotonic() + timeout_s
        for slot in self.slots:
            slot.go.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        for slot in self.slots:
            r = slot.reader
            if r is not None and r is not threading.current_thread() and slot.busy_since is None:
                r.join(max(0.0, min(0.05, deadline - time.monotonic())))

    # -- reading ----------------------------------------------------------------------------
    def _read_slot(self, slot: _SensorSlot, from_reader: bool) -> None:
        """Read one sensor now and ingest the result.  Caller holds ``slot.lock``."""
        clock = self.clock
        t0 = clock()
        try:
            result = slot.sensor.read()
            error = None
        except Exception as exc:  # any failure of a sensor is recorded as a gap, never hidden
            result, error = None, exc
        t1 = clock()
        t = 0.5 * (t0 + t1)
        slow = t1 - t0 > self.hang_timeout_s
        with self.lock:
            for d in slot.domains:
                s = self.series[d.name]
                if error is not None:
                    s.bad(t, f"raised: {type(error).__name__}: {error}"[:200])
                elif slow:
                    s.bad(t, f"hung: read took {t1 - t0:.2f} s")
                else:
                    r = result.get(d.name) if isinstance(result, dict) else None
                    if r is None:
                        s.bad(t, "missing from reading")
                    else:
                        s.ingest(t, r, t0, t1)
        if from_reader and t1 - slot.state_t >= STATE_INTERVAL_S and error is None:
            slot.state_t = t1
            try:
                slot.state = dict(slot.sensor.state())
            except Exception as exc:  # state is optional decoration: record why it is missing
                slot.state = {"state_error": repr(exc)[:200]}

    def _reader_loop(self, slot: _SensorSlot, gen: int, stop: _StopSignal, go: threading.Event) -> None:
        while True:
            go.wait()
            go.clear()
            if stop.is_set() or gen != self._generation:
                slot.busy_since = None
                return
            with slot.lock:
                self._read_slot(slot, from_reader=True)
            slot.busy_since = None
            if slot.hung:
                slot.hung = False
            self._thread_cpu_s[threading.get_ident()] = time.thread_time()

    def edge_read(self) -> None:
        """Read every healthy sensor now, on the calling thread (window edges).

        A sensor that is hung, or whose read stays in flight on its reader for longer than
        :attr:`edge_wait_s`, is skipped: the window edge then uses its buffer.
        """
        for slot in self.slots:
            if slot.hung:
                continue
            if not slot.lock.acquire(timeout=self.edge_wait_s):
                continue
            try:
                self._read_slot(slot, from_reader=False)
            finally:
                slot.lock.release()

    def _loop(self, gen: int, stop: _StopSignal) -> None:
        interval = self.interval_s
        ident = threading.get_ident()
        k = 0
        base = time.monotonic()
        while True:
            k += 1
            target = base + k * interval + ((k * _GOLDEN) % 1.0) * interval
            now_rt = time.monotonic()
            if target < now_rt:  # overran: skip missed ticks instead of bursting
                k = int((now_rt - base) / interval) + 1
                target = base + k * interval + ((k * _GOLDEN) % 1.0) * interval
            if stop.wait(target - now_rt):
                self._thread_cpu_s[ident] = time.thread_time()
                return
            if gen != self._generation:
                return
            self._tick()
            if k & 7 == 0:
                self._thread_cpu_s[ident] = time.thread_time()

    def _tick(self) -> None:
        now = self.clock()
        self.ticks += 1
        hang = self.hang_timeout_s
        for slot in self.slots:
            if slot.inline:
                if slot.lock.acquire(blocking=False):  # else a window edge is reading it right now
                    try:
                        self._read_slot(slot, from_reader=True)
                    finally:
                        slot.lock.release()
                continue
            since = slot.busy_since
            if since is not None:
                if not slot.hung and now - since > hang:
                    slot.hung = True
                    with self.lock:
                        for d in slot.domains:
                            self.series[d.name].bad(now, f"hung: read in flight > {hang:.2f} s")
                continue
            slot.busy_since = now
            slot.go.set()
        if self.on_tick is not None:
            self.on_tick(now)

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
