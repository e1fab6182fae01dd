"""Replay sensor: plays a recorded or synthetic power/energy trace against the monotonic clock.

A trace is a CSV file with a ``t_s`` column (seconds from the start of the trace,
non-decreasing) and one column per domain, either in watts (``gpu0_w``) or in
cumulative joules (``cpu_j``)::

    t_s,gpu0_w,cpu_j
    0.0,80,0
    1.0,250,15.2
    1.0,300,15.2
    2.5,300,40.0

Semantics, which the accuracy benchmark relies on:

* **Watts columns are piecewise linear** between rows.  Two rows with the same
  ``t_s`` make a step.  The cumulative energy reported for a watts column is the
  exact integral of that piecewise-linear function (trapezoids, and the exact
  quadratic for a partial segment), so a replayed trace has a known truth.
* **Joules columns are interpolated linearly** between rows (constant power
  within a segment); the power reported is that segment's slope.
* **Past the end of the trace** the last power is held (energy keeps growing at
  the final power), unless ``loop=True``, in which case the trace repeats with
  period ``t_s[-1]`` and its energy accumulates across repetitions.
* **Utilisation columns** ``<domain>_util`` (per cent, 0-100, optional, for a domain that has
  a watts or joules column) are piecewise linear like watts columns.  The sensor reports, with
  each reading, the mean utilisation since its previous reading (a trailing mean, like NVML's),
  as a busy fraction (:meth:`ReplaySensor.utilisation`).

The clock starts when :meth:`ReplaySensor.start` is called (the sampler does so
when it starts), or at the first read.  For benchmarks the sensor can emulate
real hardware:

* ``update_period_s > 0``: the energy counter only changes every
  ``update_period_s`` (at phase ``phase_s``), like NVML's ~100 ms counter.
* ``averaging_s > 0``: the power is the trailing mean over ``averaging_s``, like
  ``nvmlDeviceGetPowerUsage`` on Ampere and newer GPUs (~1 s).
* ``report_energy=False``: only power is reported (a polled-power sensor), so
  the meter has to integrate it.
"""

from __future__ import annotations

import csv
import math
import os
import threading
import time
from bisect import bisect_right
from typing import Callable, Iterable, Mapping, Sequence

from .base import DomainInfo, DomainReading, SensorBase, SensorError, readings


def _kind_of(name: str) -> str:
    if name.startswith("gpu"):
        return "gpu"
    if name.startswith("dram"):
        return "dram"
    return "cpu"


class _Column:
    """One domain of a trace: cumulative energy and power as exact functions of trace time."""

    def __init__(self, t_s: Sequence[float], values: Sequence[float], unit: str):
        if unit not in ("w", "j"):
            raise ValueError(f"unit must be 'w' or 'j', not {unit!r}")
        self.t = [float(x) for x in t_s]
        self.unit = unit
        n = len(self.t)
        if n < 1:
            raise ValueError("a trace needs at least one row")
        if unit == "w":
            self.p = [float(v) for v in values]
            cum = [0.0] * n
            for i in range(1, n):
                cum[i] = cum[i - 1] + 0.5 * (self.p[i - 1] + self.p[i]) * (self.t[i] - self.t[i - 1])
            self.e = cum
        else:
            e0 = float(values[0])
            self.e = [float(v) - e0 for v in values]
            # slope of segment i (between row i and i+1); the last one holds the final slope
            p = []
            for i in range(n - 1):
                dt = self.t[i + 1] - self.t[i]
                p.append((self.e[i + 1] - self.e[i]) / dt if dt > 0 else (p[-1] if p else 0.0))
            p.append(p[-1] if p else 0.0)
            self.p = p
        self.duration_s = self.t[-1] - self.t[0]
        self.total_j = self.e[-1]
        self._i = 0  # segment of the last lookup: reads move forward through the trace

    def final_power_w(self) -> float:
        """Power held after the trace's end: its last row's watts, or its last segment's slope."""
        return self.p[-1]

    def _energy_within(self, x: float) -> float:
        """Cumulative energy at trace time ``x`` with ``t[0] <= x`` (holding the last power after the end)."""
        t = self.t
        if x <= t[0]:
            return 0.0
        if x >= t[-1]:
            return self.e[-1] + self.final_power_w() * (x - t[-1])
        i = bisect_right(t, x) - 1  # t[i] <= x < t[i+1]
        d = x - t[i]
        span = t[i + 1] - t[i]
        if self.unit == "w":
            p0, p1 = self.p[i], self.p[i + 1]
            return self.e[i] + p0 * d + (p1 - p0) * d * d / (2.0 * span)
        return self.e[i] + (self.e[i + 1] - self.e[i]) * d / span

    def _power_within(self, x: float) -> float:
        t = self.t
        if x <= t[0]:
            return self.p[0]
        if x >= t[-1]:
            return self.final_power_w()
        i = bisect_right(t, x) - 1
        if self.unit == "w":
            span = t[i + 1] - t[i]
            return self.p[i] + (self.p[i + 1] - self.p[i]) * (x - t[i]) / span
        return self.p[i]

    def energy_j(self, x: float, loop: bool) -> float:
        """Exact cumulative energy at trace time ``x`` (seconds from the trace start)."""
        x = x + self.t[0]
        if loop and self.duration_s > 0 and x > self.t[-1]:
            n, r = divmod(x - self.t[0], self.duration_s)
            return n * self.total_j + self._energy_within(self.t[0] + r)
        if x < self.t[0]:
            return self.p[0] * (x - self.t[0])  # before the start: never used by the sampler
        return self._energy_within(x)

    def energy_power(self, x: float, loop: bool) -> tuple[float, float]:
        """``(energy_j(x), power_w(x))`` with one segment lookup (the sensor's every-sample path)."""
        t = self.t
        xa = x + t[0]
        i = self._i
        n = len(t)
        if not (i + 1 < n and t[i] <= xa < t[i + 1]):
            if n < 2 or not t[0] <= xa < t[-1]:
                return self.energy_j(x, loop), self.power_w(x, loop)
            i = self._i = bisect_right(t, xa) - 1
        d = xa - t[i]
        span = t[i + 1] - t[i]
        if self.unit == "w":
            p0, p1 = self.p[i], self.p[i + 1]
            return self.e[i] + p0 * d + (p1 - p0) * d * d / (2.0 * span), p0 + (p1 - p0) * d / span
        return self.e[i] + (self.e[i + 1] - self.e[i]) * d / span, self.p[i]

    def power_w(self, x: float, loop: bool) -> float:
        x = x + self.t[0]
        if loop and self.duration_s > 0 and x > self.t[-1]:
            r = (x - self.t[0]) % self.duration_s
            return self._power_within(self.t[0] + r)
        return self._power_within(x)


class ReplayTrace:
    """A parsed trace: trace time plus one :class:`_Column` per domain."""

    def __init__(self, t_s: Sequence[float], columns: Mapping[str, Sequence[float]]):
        """Build a trace from arrays.

        Args:
            t_s: Row times in seconds, non-decreasing.
            columns: ``<domain>_w`` (watts) or ``<domain>_j`` (cumulative joules) → values per row.
        """
        t = [float(x) for x in t_s]
        if any(b < a for a, b in zip(t, t[1:])):
            raise ValueError("t_s must be non-decreasing")
        self.t_s = t
        self.columns: dict[str, _Column] = {}
        #: Domain → its utilisation column (per cent, piecewise linear), where the trace has one.
        self.util: dict[str, _Column] = {}
        for key, values in columns.items():
            if len(values) != len(t):
                raise ValueError(f"column {key!r} has {len(values)} rows, t_s has {len(t)}")
            if key.endswith("_util"):
                vals = [float(v) for v in values]
                if any(not 0.0 <= v <= 100.0 for v in vals):
                    raise ValueError(f"column {key!r}: utilisation is in per cent, 0 to 100")
                self.util[key[:-5]] = _Column(t, vals, "w")
                continue
            if key.endswith("_w"):
                name, unit = key[:-2], "w"
            elif key.endswith("_j"):
                name, unit = key[:-2], "j"
            else:
                raise ValueError(f"column {key!r} must end in _w (watts), _j (cumulative joules) or _util "
                                 "(utilisation, per cent)")
            if name in self.columns:
                raise ValueError(f"domain {name!r} appears twice")
            self.columns[name] = _Column(t, values, unit)
        if not self.columns:
            raise ValueError("a trace needs at least one <domain>_w or <domain>_j column")
        for name in self.util:
            if name not in self.columns:
                raise ValueError(f"column {name + '_util'!r} has no {name}_w or {name}_j column")

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "ReplayTrace":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "t_s" not in reader.fieldnames:
                raise ValueError(f"{path}: a replay trace needs a t_s column")
            rows = list(reader)
        fields = [c for c in reader.fieldnames if c != "t_s"]
        return cls(
            [float(r["t_s"]) for r in rows],
            {c: [float(r[c]) for r in rows] for c in fields},
        )

    @property
    def duration_s(self) -> float:
        return self.t_s[-1] - self.t_s[0]

    def energy_between_j(self, domain: str, a_s: float, b_s: float, *, loop: bool = False) -> float:
        """Exact energy of ``domain`` between trace times ``a_s`` and ``b_s`` (the truth for benchmarks)."""
        col = self.columns[domain]
        return col.energy_j(b_s, loop) - col.energy_j(a_s, loop)

    def power_at_w(self, domain: str, x_s: float, *, loop: bool = False) -> float:
        return self.columns[domain].power_w(x_s, loop)

    def mean_util(self, domain: str, a_s: float, b_s: float, *, loop: bool = False) -> float | None:
        """Mean utilisation (per cent) of ``domain`` between trace times ``a_s`` < ``b_s`` (its value
        at ``b_s`` when they are equal); None without a utilisation column."""
        col = self.util.get(domain)
        if col is None:
            return None
        if b_s > a_s:
            return (col.energy_j(b_s, loop) - col.energy_j(a_s, loop)) / (b_s - a_s)
        return col.power_w(b_s, loop)


class ReplaySensor(SensorBase):
    """Plays a :class:`ReplayTrace` against a clock.  Method ``replay``.

    Args:
        trace: The trace, or a path to its CSV.
        clock: Monotonic clock in seconds; must be the meter's clock.
        update_period_s: Emulate a counter that only changes every this many seconds (0: always fresh).
        phase_s: Phase of the emulated counter updates within ``update_period_s``.
        averaging_s: Emulate a power reading that is the trailing mean over this many seconds.
        report_energy: Report cumulative energy (counter-like).  When False only power is
            reported and the meter integrates it.
        report_power: Report power.
        loop: Repeat the trace instead of holding the last power after its end.
        names: Rename domains (trace name → reported name).
        kinds: Override the domain kind (reported name → ``gpu``/``cpu``/``dram``); by default
            names starting with ``gpu`` are GPUs, ``dram`` DRAM, everything else CPU.
    """

    name = "replay"
    #: Computes in-process and never blocks: the sampler may read it on its own thread.
    nonblocking = True

    def __init__(
        self,
        trace: ReplayTrace | str | os.PathLike,
        *,
        clock: Callable[[], float] = time.monotonic,
        update_period_s: float = 0.0,
        phase_s: float = 0.0,
        averaging_s: float = 0.0,
        report_energy: bool = True,
        report_power: bool = True,
        loop: bool = False,
        names: Mapping[str, str] | None = None,
        kinds: Mapping[str, str] | None = None,
    ):
        if not isinstance(trace, ReplayTrace):
            path = os.fspath(trace)
            try:
                trace = ReplayTrace.from_csv(path)
            except (OSError, ValueError) as exc:
                raise SensorError(f"replay: cannot read trace {path!r}: {exc}") from exc
            self.path: str | None = path
        else:
            self.path = None
        if not (report_energy or report_power):
            raise ValueError("report_energy and report_power cannot both be False")
        self.trace = trace
        self._clock = clock
        #: What the sampler records at every tick and hands to :meth:`values_at` later: the
        #: sensor's own clock; the trace lookup waits for the batch (Sampler.sync).
        self.sample = clock
        self.update_period_s = float(update_period_s)
        self.phase_s = float(phase_s) % self.update_period_s if self.update_period_s > 0 else 0.0
        self.averaging_s = float(averaging_s)
        self.report_energy = report_energy
        self.report_power = report_power
        self.loop = loop
        names = dict(names or {})
        self._names = {src: names.get(src, src) for src in trace.columns}
        kinds = dict(kinds or {})
        details = {"trace": self.path or "in-memory", "duration_s": f"{trace.duration_s:g}"}
        if self.update_period_s > 0:
            details["emulates"] = f"counter updating every {self.update_period_s:g} s"
        if self.averaging_s > 0:
            details["power_averaging_s"] = f"{self.averaging_s:g}"
        self._domains = [
            DomainInfo(
                name=out,
                kind=kinds.get(out, _kind_of(out)),
                method="replay",
                sensor="replay",
                update_period_s=self.update_period_s,
                averaging_s=self.averaging_s,
                details=details,
            )
            for out in self._names.values()
        ]
        self._t0: float | None = None
        self._lock = threading.Lock()
        self._plain = (
            self.update_period_s == 0 and self.averaging_s == 0 and self.report_energy and self.report_power
        )
        self._columns = list(trace.columns.values())  # in the order of self._domains
        # utilisation columns in the same order (None for a domain without one); the trace time of
        # the previous reading, and the utilisation of the last one (see utilisation())
        self._util_cols = [trace.util.get(src) for src in trace.columns] if trace.util else None
        self._util_x: float | None = None
        self._util_last: tuple[float | None, ...] | None = None
        if self._util_cols is None:
            self.utilisation = None  # the capability is absent, not empty

    # -- clock ------------------------------------------------------------------------------
    def start(self, t0: float | None = None) -> None:
        """Set the trace origin to ``t0`` (default: now on the sensor's clock)."""
        with self._lock:
            self._t0 = self._clock() if t0 is None else float(t0)

    @property
    def t0(self) -> float | None:
        """Clock time at which the trace started playing (None before the first read)."""
        return self._t0

    def trace_time(self, clock_s: float) -> float:
        """Trace time for a reading of the sensor's clock."""
        if self._t0 is None:
            self.start()
        return clock_s - self._t0  # type: ignore[operator]

    def true_energy_j(self, domain: str, begin_clock_s: float, end_clock_s: float) -> float:
        """Exact energy of a reported domain between two clock readings (the benchmark's truth)."""
        src = next(s for s, o in self._names.items() if o == domain)
        return self.trace.energy_between_j(
            src, self.trace_time(begin_clock_s), self.trace_time(end_clock_s), loop=self.loop
        )

    # -- Sensor protocol --------------------------------------------------------------------
    def domains(self) -> list[DomainInfo]:
        return list(self._domains)

    def read(self) -> dict[str, DomainReading]:
        return readings(self._domains, self.read_values())

    def read_values(self) -> tuple[tuple[float | None, float | None], ...]:
        """One ``(energy_j, power_w)`` pair per domain, in the order of :meth:`domains`."""
        return self.values_at(None, self._clock())

    def values_at(self, t: float | None, clock_s: float) -> tuple[tuple[float | None, float | None], ...]:
        """The reading at ``clock_s`` on the sensor's clock (what :attr:`sample` returned; ``t``,
        the sampler's time of it, is the same clock and not needed)."""
        x = self.trace_time(clock_s)
        loop = self.loop
        if self._util_cols is not None:
            self._note_util(x)
        if self._plain:  # fresh energy and instantaneous power: one lookup per column
            if len(self._columns) == 1:
                return (self._columns[0].energy_power(x, loop),)
            fresh: list[tuple[float, float]] = []
            for col in self._columns:
                fresh.append(col.energy_power(x, loop))
            return tuple(fresh)
        out: list[tuple[float | None, float | None]] = []
        for col in self._columns:
            energy = power = None
            if self.report_energy:
                xe = x
                if self.update_period_s > 0:
                    p, ph = self.update_period_s, self.phase_s
                    xe = ph + math.floor((x - ph) / p) * p
                    xe = max(xe, 0.0)
                energy = col.energy_j(xe, self.loop)
            if self.report_power:
                if self.averaging_s > 0:
                    a = self.averaging_s
                    lo = max(0.0, x - a)
                    span = x - lo
                    power = (
                        (col.energy_j(x, self.loop) - col.energy_j(lo, self.loop)) / span
                        if span > 0
                        else col.power_w(x, self.loop)
                    )
                else:
                    power = col.power_w(x, self.loop)
            out.append((energy, power))
        return tuple(out)

    def _note_util(self, x: float) -> None:
        """The mean utilisation of each domain since the previous reading (trace time ``x``), kept for
        :meth:`utilisation`, which the sampler calls right after this reading."""
        a = self._util_x if self._util_x is not None and self._util_x <= x else x
        self._util_x = x
        out = []
        for col in self._util_cols:
            if col is None:
                out.append(None)
            elif x > a:
                out.append((col.energy_j(x, self.loop) - col.energy_j(a, self.loop)) / (x - a) / 100.0)
            else:
                out.append(col.power_w(x, self.loop) / 100.0)
        self._util_last = tuple(out)

    def utilisation(self) -> tuple[float | None, ...] | None:
        """The busy fraction (0-1) of each domain between the previous reading and the last one (their
        mean, from the trace's ``<domain>_util`` columns; None for a domain without one), once per
        reading; None when no reading was taken since the last call.  A trace without utilisation
        columns has no such capability (the attribute is None)."""
        out, self._util_last = self._util_last, None
        return out

    def state(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


def write_trace_csv(path: str | os.PathLike, t_s: Iterable[float], columns: Mapping[str, Iterable[float]]) -> None:
    """Write a trace in the format :class:`ReplayTrace` reads."""
    cols = {k: list(v) for k, v in columns.items()}
    ts = list(t_s)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", *cols])
        for i, t in enumerate(ts):
            w.writerow([repr(float(t)), *(repr(float(cols[k][i])) for k in cols)])
