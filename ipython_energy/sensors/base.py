"""The sensor protocol: cumulative joules per domain, plus power where the hardware gives it.

A sensor owns one or more *domains* (``gpu0``, ``package0``, ``dram0``, ``cpu``).
Each read returns, per domain, a cumulative energy in joules that only goes up
(the sensor unwraps hardware counters itself) and, where available, an
instantaneous or averaged power in watts.  A sensor never talks to MLflow,
IPython or Jupyter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Mapping, NamedTuple, Protocol, runtime_checkable

#: How a domain's energy is obtained.  Every number we show carries one of these.
METHODS = ("counter", "polled", "estimated", "replay")


class SensorError(RuntimeError):
    """Raised when a sensor that was asked for explicitly cannot be used.

    The message says what to do about it (permissions, drivers, paths).
    Discovery never raises this; it records the reason instead.
    """


@dataclass(frozen=True)
class DomainInfo:
    """What a domain is and how it is measured.

    Attributes:
        name: Domain key used in metric names, e.g. ``gpu0``, ``package0``, ``dram0``, ``cpu``.
        kind: ``gpu``, ``cpu`` or ``dram``.
        method: One of :data:`METHODS`.
        sensor: The backend, e.g. ``nvml``, ``rapl``, ``cpu-model``, ``replay``.
        update_period_s: How often the underlying value changes.  A window shorter
            than this is flagged as short and its energy interpolated.
        averaging_s: For polled power, the width of the sensor's own averaging
            window (NVML on Ampere and newer reports a ~1 s average); 0 for
            instantaneous power and for counters.
        details: Static facts recorded in provenance (model, driver, power limit, TDP…).
    """

    name: str
    kind: str
    method: str
    sensor: str
    update_period_s: float = 0.1
    averaging_s: float = 0.0
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def estimated(self) -> bool:
        return self.method == "estimated"


class DomainReading(NamedTuple):
    """One reading of one domain (immutable; a named tuple, because one is made per domain
    on every sample).

    Attributes:
        energy_j: Cumulative energy in joules since an arbitrary origin, monotonic,
            or ``None`` when the domain only gives power.
        power_w: Power in watts at (or averaged up to) the time of the read, or ``None``.
    """

    energy_j: float | None = None
    power_w: float | None = None


def readings(domains: list[DomainInfo], values) -> dict[str, DomainReading]:
    """``read()`` built from ``read_values()`` for a sensor that implements the latter."""
    return {d.name: DomainReading(*v) for d, v in zip(domains, values)}


@runtime_checkable
class Sensor(Protocol):
    """A source of energy readings for one or more domains: the four methods every sensor has.

    Optional capabilities are declared by deriving from :class:`SensorBase`, which gives each a
    default; a sensor that only follows this protocol has none of them (it is read with
    :meth:`read` on a reader thread of its own).
    """

    name: str

    def domains(self) -> list[DomainInfo]:
        """The domains this sensor reports, fixed for its lifetime."""
        ...

    def read(self) -> dict[str, DomainReading]:
        """Read every domain now.  May raise; the sampler records a gap."""
        ...

    def state(self) -> dict[str, str]:
        """Volatile facts worth recording at window start (e.g. temperature)."""
        ...

    def close(self) -> None:
        ...


class SensorBase:
    """Base class for sensors with optional capabilities, each an attribute with its default.

    The sampler looks these up once per sensor, never by probing: a sensor that does not derive
    from this class is taken to have none of them.

    Attributes:
        read_values: ``None``, or a method returning the same reading as :meth:`read` as one
            ``(energy_j, power_w)`` pair per domain, in the order of :meth:`domains`, without the
            dict and the :class:`DomainReading` objects.  The sampler calls it instead of
            :meth:`read` (ten times a second, the allocations of ``read()`` are a good part of the
            sampler's cost); ``read()`` stays the reference.
        nonblocking: True for a sensor that computes in-process and never blocks (the cpu-model
            estimate, replay) and has :attr:`values_at`: the sampler thread then only records
            :attr:`sample`'s result and the time at each tick, and the sensor's arithmetic runs
            later, in batches (``Sampler.sync``), and at window edges on the caller's thread.
            Any other sensor is read by a reader thread of its own.
        sample: ``None`` if the clock is all a nonblocking sensor needs to know about a moment,
            else a cheap, thread-safe call (a C function such as :func:`time.process_time`)
            whose result is.
        values_at: ``None``, or for a nonblocking sensor ``values_at(t, sample)``: the
            :attr:`read_values` reading as of sampler clock time ``t``, when :attr:`sample`
            returned ``sample``.  Called in time order, one call at a time.
        utilisation: ``None`` (the sensor reports no utilisation), or a method called right after
            each read (:attr:`read_values`, :meth:`read` or :attr:`values_at`, on the same thread)
            that returns ``None`` when it has no new utilisation reading this time, else one busy
            fraction (0-1) or ``None`` per domain, in the order of :meth:`domains`.  A reading
            describes the time since the sensor's previous utilisation reading (as NVML's and a
            CPU-time difference do).  The sampler calls it at most every :attr:`util_period_s`.
        slow_when_idle: True for a blocking sensor whose every domain is a cumulative counter that
            is costly to read (NVML's energy counter: ~3 ms of CPU per read on H100/H200).  A
            window's energy is then exact from the reads at its two edges, whatever the rate in
            between, so the sampler reads it at its idle interval (``Sampler(idle_interval_s=...)``)
            while no window is open, and at every tick only while one is (see
            :attr:`~ipython_energy.edges.TickTally.active`).  Polled power is integrated, so a
            sensor that gives power only must never set it.
    """

    name: str = "sensor"
    read_values: Callable[[], tuple[tuple[float | None, float | None], ...]] | None = None
    nonblocking: ClassVar[bool] = False
    sample: Callable[[], object] | None = None
    values_at: Callable[[float, object], tuple[tuple[float | None, float | None], ...]] | None = None
    utilisation: Callable[[], tuple[float | None, ...] | None] | None = None
    #: Least time between two :attr:`utilisation` calls (sampler clock): 0 calls it after every
    #: read; a sensor whose utilisation costs a driver call reads it less often than its energy.
    util_period_s: ClassVar[float] = 0.0
    slow_when_idle: bool = False

    def start(self, t0: float) -> None:
        """Called once, when sampling first starts, with the sampler's clock time.  Default: nothing."""

    def domains(self) -> list[DomainInfo]:
        """The domains this sensor reports, fixed for its lifetime."""
        raise NotImplementedError

    def read(self) -> dict[str, DomainReading]:
        """Read every domain now.  May raise; the sampler records a gap.  Default: built from
        :attr:`read_values`."""
        if self.read_values is None:
            raise NotImplementedError
        return readings(self.domains(), self.read_values())

    def state(self) -> dict[str, str]:
        """Volatile facts worth recording at window start (e.g. temperature).  Default: none."""
        return {}

    def close(self) -> None:
        """Release what the sensor holds.  Default: nothing."""
