"""The sampler: one named daemon thread that reads every sensor at a fixed rate into bounded buffers.

It knows nothing about cells, runs or sweeps.  What it keeps, per domain, is a
:class:`~ipython_energy.series.DomainSeries` (cumulative energy at any recent instant, plus the
domain's gaps); this module only feeds them, from threads.

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
After each stored tick the sampler updates its :class:`~ipython_energy.edges.TickTally`
(peak power, begin-edge refinement, quiet-time energy), arithmetic over the series that calls
nothing outside them: the sampler never calls back into the meter.

A hardware sensor whose domains are costly cumulative counters (NVML's: ~3 ms of CPU per read on
H100/H200) declares ``slow_when_idle``: it is read at every tick only while the meter's ticks serve
a window (:attr:`~ipython_energy.edges.TickTally.active`: a window open, a snapshot to refine, the
idle baseline being measured), and every ``idle_interval_s`` otherwise.  Every window edge still
reads it, so a window's energy (the counter's difference across its edges) is as exact as before,
and so are the session's parts between windows; only the time resolution of its series between
windows drops.  An edge is placed between two reads one counter update apart: after the ticks stop
serving a window they go on reading at every tick for one update period and two intervals (the
*tail*), and a mark taken without a read (a cell that begins or ends, see :meth:`Sampler.read_soon`)
starts a read at once, without waiting for it, and such a tail.  When the ticks start serving a
window again, the first :data:`PROBE_TICKS` come every :data:`PROBE_FRACTION` of the counter's
period, as after a start, to find its update phase again.

When a counter updates slowly, tick times are dithered within each interval (a
golden-ratio sequence over the whole interval) so that a counter updating at about the
sampling rate is observed at varying phases; that is what lets
:class:`~ipython_energy.phase.PhaseLock` find its update times.

Why this module is over 500 lines: the tick loop, the reader threads, the window-edge reads and
:meth:`Sampler.sync` share each sensor slot's two locks and the ring of unstored ticks, and the
rules of their hand-off (one read in flight per sensor, edges that wait a bounded time, readings
stored in time order, nothing stored after stop) are one protocol, checked best in one place.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable, Iterable

from .sensors.base import DomainInfo, Sensor, SensorBase
from .edges import TickTally
from .series import DEFAULT_LOW_UTIL, DomainSeries

THREAD_NAME = "ipython-energy-sampler"
#: Default buffer length in seconds of samples (per domain).
DEFAULT_BUFFER_S = 600.0
#: Right after :meth:`Sampler.start`, when a counter updates slowly, the first this many ticks come
#: every :data:`PROBE_FRACTION` of its update period (if the interval is longer): dense reads that
#: show within a fraction of a second whether it updates as slowly as declared (and pin its update
#: phase down sooner), before the first window depends on it.
PROBE_TICKS = 12
PROBE_FRACTION = 0.25
#: Default for ``idle_interval_s``: how often a ``slow_when_idle`` sensor (an NVML energy counter) is
#: read while no window needs the ticks (the ``nvml_idle_interval_s`` setting).
DEFAULT_IDLE_INTERVAL_S = 2.0
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


#: What a sensor that does not derive from SensorBase offers beyond the protocol: nothing.
_NO_CAPABILITIES = SensorBase()


class _SensorSlot:
    """A sensor with its domains' series, and for a blocking sensor its reader thread.

    A blocking sensor's reader thread sleeps on ``wake`` (a held lock).  Whoever dispatches a read
    first takes ``done`` without waiting (it is free only while no read is in flight), then
    releases ``wake``; the reader releases ``done`` when the read has been ingested.  So at most
    one read of a sensor is in flight, a tick never waits for one, and a window edge can wait for
    one with a timeout.
    """

    __slots__ = ("sensor", "domains", "series", "targets", "read_values", "tuples", "inline", "sample",
                 "values_at", "start", "wake", "done", "busy_since", "hung", "edge", "state", "state_t", "reader",
                 "round_trips_s", "util", "util_due_s", "util_t", "coolest_c", "slow_when_idle", "idle_due_s",
                 "read_t")

    def __init__(self, sensor: Sensor):
        self.sensor = sensor
        self.domains = sensor.domains()
        self.series: list[tuple[str, DomainSeries]] = []  # (domain, series), filled by the sampler
        self.targets: tuple[DomainSeries, ...] = ()  # the same series, in the order of domains()
        # The optional capabilities (:class:`~ipython_energy.sensors.base.SensorBase`); a sensor
        # that only follows the Sensor protocol has none of them.
        caps = sensor if isinstance(sensor, SensorBase) else _NO_CAPABILITIES
        #: The sensor's ``read_values`` (a tuple of (energy_j, power_w) pairs in domain order)
        #: if it has one: cheaper than ``read`` on every sample.
        self.read_values = caps.read_values
        #: Sensors that compute in-process and cannot block (``nonblocking = True`` with
        #: ``values_at``: the replay sensor, the cpu-model estimate) are sampled on the sampler
        #: thread itself (and at window edges on the caller's thread), and their readings worked out
        #: later by whoever stores them; hardware sensors get a reader thread so that a hung driver
        #: call never stalls the others, nor a window edge.
        self.inline = caps.nonblocking and caps.values_at is not None
        self.values_at = caps.values_at if self.inline else None
        self.sample = caps.sample if self.inline else None
        self.start = caps.start if caps is sensor else None
        #: The sensor's ``utilisation`` (called right after its reads), if it reports one; a blocking
        #: sensor's is called again only ``util_due_s`` after the last call (set by the sampler from
        #: the sensor's ``util_period_s``), at ``util_t``.
        self.util = caps.utilisation
        self.util_due_s = 0.0
        self.util_t = -math.inf
        #: For a ``slow_when_idle`` sensor, how long after its last read (``read_t``, sampler clock, a
        #: tick's or an edge's) the next is due while no window needs the ticks; 0: every tick.
        self.slow_when_idle = bool(caps.slow_when_idle)
        self.idle_due_s = 0.0
        self.read_t = -math.inf
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
        #: The lowest ``temperature_c`` its state has reported (None: none yet): the session's idle
        #: temperature, that ``cooldown auto`` waits to come back near (ipython_energy/repeats.py).
        self.coolest_c: float | None = None
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
        capacity: Points kept per domain (default: from ``buffer_s`` and ``interval_s``).
        background: False: no sampler thread; the caller takes the ticks with :meth:`tick`, on an
            injected ``clock`` that it moves itself (tests, simulations).  Blocking sensors still
            get their reader threads.
        low_util: Busy fraction (0-1) below which a domain's energy counts as spent at low
            utilisation (:meth:`DomainSeries.set_util`), for sensors that report utilisation.
        idle_interval_s: How often a blocking sensor that declares ``slow_when_idle`` is read while
            the ticks serve no window (default :data:`DEFAULT_IDLE_INTERVAL_S`); None, or a value not
            above ``interval_s``, reads it at every tick always.

    After each tick's readings are stored (see :meth:`sync`: in batches, on the sampler thread or on
    whichever thread asks for the series first) the sampler updates :attr:`tally`
    (:class:`~ipython_energy.edges.TickTally`), under the store lock.
    """

    def __init__(
        self,
        sensors: Iterable[Sensor],
        *,
        interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        buffer_s: float = DEFAULT_BUFFER_S,
        hang_timeout_s: float | None = None,
        capacity: int | None = None,
        background: bool = True,
        low_util: float = DEFAULT_LOW_UTIL,
        idle_interval_s: float | None = DEFAULT_IDLE_INTERVAL_S,
    ):
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = float(interval_s)
        slow = idle_interval_s is not None and idle_interval_s > interval_s
        #: How often ``slow_when_idle`` sensors are read while no window needs the ticks (None: every tick).
        self.idle_interval_s = float(idle_interval_s) if slow else None
        self.clock = clock
        self.background = background
        self.hang_timeout_s = (
            float(hang_timeout_s) if hang_timeout_s is not None else min(1.0, max(2 * interval_s, 0.25))
        )
        #: Longest a window edge waits for blocking sensors (all of them together) before using
        #: their buffers and recording a gap: twice a sensor's usual round trip, at least
        #: :data:`EDGE_TIMEOUT_MIN_S`, at most this.
        self.edge_wait_s = min(EDGE_TIMEOUT_MAX_S, self.hang_timeout_s / 4)
        self.capacity = int(capacity) if capacity else max(64, int(math.ceil(buffer_s / interval_s)) * 2)
        self.lock = threading.RLock()  # the store lock: series, gaps, the tally
        self.slots = [_SensorSlot(s) for s in sensors]
        self.series: dict[str, DomainSeries] = {}
        self.domain_slot: dict[str, _SensorSlot] = {}
        for slot in self.slots:
            for d in slot.domains:
                if d.name in self.series:
                    raise ValueError(f"two sensors report domain {d.name!r}")
                ds = DomainSeries(d, self.capacity)
                ds.low_util = low_util
                self.series[d.name] = ds
                self.domain_slot[d.name] = slot
                slot.series.append((d.name, ds))
            slot.targets = tuple(ds for _, ds in slot.series)
            if slow and not slot.inline and slot.slow_when_idle:
                # half an interval early, as for utilisation: dithered ticks must not skip one that is due
                slot.idle_due_s = self.idle_interval_s - 0.5 * self.interval_s
            if slot.util is not None:
                # half an interval early: dithered ticks must not skip a reading that is due
                period = getattr(slot.sensor, "util_period_s", 0.0)
                slot.util_due_s = max(0.0, period - 0.5 * self.interval_s) if period > 0 else 0.0
        #: Per-tick figures over all series (peak power, begin-edge refinement, quiet energy),
        #: configured and read by whoever keeps windows, under :attr:`lock`.
        self.tally = TickTally(self.series)
        self._inline = [s for s in self.slots if s.inline]
        self._readers = [s for s in self.slots if not s.inline]
        #: True when some sensor is read at the idle interval while the ticks serve no window.
        self._slow = any(s.idle_due_s > 0 for s in self._readers)
        #: After the ticks stop serving (or a mark without a read), every tick still reads for this
        #: long: one update of the slowest such counter and two (dithered) intervals, so that a read
        #: sees the update after the edge.  Until ``_serving_until`` on the sampler clock.
        self._tail_s = 2.0 * self.interval_s + max(
            (d.update_period_s for s in self._readers if s.idle_due_s for d in s.domains), default=0.0)
        self._serving_until = -_INF
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
        if self._stopped:
            return False
        return not self.background or (self._thread is not None and self._thread.is_alive())

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
                if slot.start is not None:
                    slot.start(now)
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
        if self.background:
            self._thread = threading.Thread(target=self._loop, args=(gen,), name=THREAD_NAME, daemon=True)
            self._thread.start()

    def tick(self) -> None:
        """Take one tick now, on the calling thread, as the sampler thread does at every interval:
        dispatch the blocking sensors' reads and wait for them (each up to ``hang_timeout_s``, in
        real time), sample the nonblocking sensors, and store it all (:meth:`sync`).

        For a sampler built with ``background=False`` and driven by its clock (tests,
        simulations); a sampler with a thread takes its ticks on that thread only.
        """
        if self.background:
            raise RuntimeError("Sampler.tick() is for a sampler built with background=False")
        now = self.clock()
        readers = self._readers
        if readers:
            self._dispatch_readers(now, self._serving(now, False))
        n = self._n
        i = n & _RING_MASK
        self._times[i] = now
        for fn, buf in self._captures:
            try:
                buf[i] = fn()
            except Exception as exc:  # any failure of a sensor is recorded as a gap, never hidden
                buf[i] = exc
        self._n = n + 1
        for slot in readers:
            if not slot.hung and slot.done.acquire(timeout=self.hang_timeout_s):
                slot.done.release()
        with self.lock:
            self.sync()

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
    def _read_util(slot: _SensorSlot):
        """The sensor's utilisation reading right after a read, or None (none new, or it raised:
        utilisation is never worth a gap in the energy)."""
        try:
            return slot.util()
        except Exception:  # noqa: BLE001 - a failed utilisation read is just no reading
            return None

    @staticmethod
    def _store_util(slot: _SensorSlot, t: float, util) -> None:
        """Hand a utilisation reading (one fraction or None per domain) to the series.  Caller holds
        the store lock, right after storing the energy of the same read."""
        if isinstance(util, tuple) and len(util) == len(slot.targets):
            for s, u in zip(slot.targets, util):
                s.set_util(t, u)

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
        if slot.util is not None and error is None and t - slot.util_t >= slot.util_due_s:
            slot.util_t = t
            util = self._read_util(slot)
            if util is not None:
                self._store_util(slot, t, util)

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
        # utilisation after t1 (its call is not part of the energy read's timing), when due
        util = None
        if slot.util is not None and error is None and t1 - slot.util_t >= slot.util_due_s:
            slot.util_t = t1
            util = self._read_util(slot)
        with self.lock:
            if gen != self._generation or (tick and self._stopped):
                return  # a read that outlived stop() or a restart: not this sampler's any more
            self._ingest(slot, result, error, t0, t1)
            if util is not None:
                self._store_util(slot, 0.5 * (t0 + t1), util)
        if tick and error is None and t1 - slot.state_t >= STATE_INTERVAL_S:
            self._refresh_state(slot, t1)

    @staticmethod
    def _refresh_state(slot: _SensorSlot, t: float) -> None:
        slot.state_t = t
        try:
            slot.state = dict(slot.sensor.state())
        except Exception as exc:  # state is optional decoration: record why it is missing
            slot.state = {"state_error": repr(exc)[:200]}
        try:
            temperature = float(slot.state["temperature_c"])
        except (KeyError, ValueError):
            return
        if slot.coolest_c is None or temperature < slot.coolest_c:
            slot.coolest_c = temperature

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
        slot.read_t = now
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
        within a fraction of a second, before the first window depends on it.  Where a sensor is read
        only every ``idle_interval_s`` between windows, the ticks after the tally becomes active again
        (a window began) are such probes too: the counter's update phase may have moved meanwhile.
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
        slow, tally = self._slow, self.tally
        was_active = True
        k = 0
        g_prev = 0.0
        overhead = 0.0
        t_prev = monotonic()
        while True:
            k += 1
            if slow:  # a window began after reads at the idle interval: probe the counter's phase again
                active = tally.active
                if active and not was_active and probe_s is not None:
                    probe_left = PROBE_TICKS
                was_active = active
            probing = probe_left > 0
            if probing:
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
            # what the samples mean (series, gaps, the tally) to sync(), every SYNC_TICKS
            # ticks or as soon as anyone looks.  No lock and no allocation of its own.
            if self._stopped or gen != self._generation:
                self._thread_cpu_s[ident] = thread_time()
                return
            now = clock()
            if readers:
                self._dispatch_readers(now, self._serving(now, probing))
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

    def _serving(self, now: float, probing: bool) -> bool:
        """Whether this tick reads the ``slow_when_idle`` sensors: always where there are none, on
        probe ticks, while the tally is active (a window is open, a snapshot waits, the idle
        baseline is measured) and for :attr:`_tail_s` after that or after :meth:`read_soon`."""
        if not self._slow or probing:
            return True
        if self.tally.active:
            self._serving_until = now + self._tail_s
            return True
        return now < self._serving_until

    def read_soon(self) -> None:
        """A mark is being taken without a sensor read (a cell began or ended): start a read of the
        ``slow_when_idle`` sensors now, without waiting for it (a lock taken and released per sensor:
        microseconds), and read them at every tick for :attr:`_tail_s`, so that the mark falls
        between two reads one counter update apart rather than two idle reads seconds apart.  Nothing
        to do while the ticks read them anyway.  A sampler driven by its caller (``background=False``)
        waits for the read, so that its time is the mark's."""
        if not self._slow or self._stopped:
            return
        now = self.clock()
        if now < self._serving_until or self.tally.active:
            self._serving_until = max(self._serving_until, now + self._tail_s)
            return
        self._serving_until = now + self._tail_s
        for slot in self._readers:
            if slot.idle_due_s and not slot.hung and slot.done.acquire(blocking=False):
                slot.busy_since = now
                slot.read_t = now
                slot.edge = False
                slot.wake.release()
                if not self.background and slot.done.acquire(timeout=self.hang_timeout_s):
                    slot.done.release()

    def _dispatch_readers(self, now: float, serving: bool) -> None:
        """Start a read on every idle blocking sensor that is due (a ``slow_when_idle`` one only
        every ``idle_interval_s`` unless ``serving``: the ticks serve a window, or probe); mark the
        ones in flight too long as hung."""
        for slot in self._readers:
            if serving or not slot.idle_due_s or now - slot.read_t >= slot.idle_due_s:
                if slot.done.acquire(blocking=False):
                    slot.busy_since = now
                    slot.read_t = now
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
        nonblocking sensor's reading worked out from its sample, then :attr:`tally`, as if it had
        happened then.

        Caller holds the store lock.  Everything that reads the series calls this first (window
        edges, :class:`~ipython_energy.meter.Meter` queries, :meth:`stop`), so nobody sees them
        behind by more than the reads in flight.  A tick recorded before a window edge's readings
        but counted after them is late and dropped, as is one taken after :meth:`stop`.
        """
        n = self._n  # (the sampler thread may record more meanwhile; they wait for the next sync)
        k = self._synced
        if k == n:
            return
        after_tick = self.tally.after_tick
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
            after_tick(t)
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

    def coolest_temperatures(self) -> dict[str, float]:
        """The lowest temperature (°C) each domain's sensor has reported since the sampler started."""
        return {d.name: slot.coolest_c for slot in self.slots if slot.coolest_c is not None for d in slot.domains}

    def round_trips_s(self) -> dict[str, list[float]]:
        """Recent dispatch-to-stored times of each blocking sensor's reads, in seconds (what
        :meth:`edge_timeout_s` is worked out from), keyed by the sensor's domains (``"gpu0"``,
        ``"package0,dram0"``); sensors not read yet are left out."""
        return {",".join(d.name for d in slot.domains): list(slot.round_trips_s)
                for slot in self._readers if slot.round_trips_s}

    def cpu_time_s(self) -> float:
        """CPU seconds used so far by the sampler thread and the reader threads."""
        return sum(self._thread_cpu_s.values())

    def threads(self) -> list[threading.Thread]:
        out = [self._thread] if self._thread is not None else []
        out += [s.reader for s in self.slots if s.reader is not None]
        return out
