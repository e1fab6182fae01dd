"""The sensor protocol: cumulative joules per domain, plus power where the hardware gives it.

A sensor owns one or more *domains* (``gpu0``, ``package0``, ``dram0``, ``cpu``).
Each read returns, per domain, a cumulative energy in joules that only goes up
(the sensor unwraps hardware counters itself) and, where available, an
instantaneous or averaged power in watts.  A sensor never talks to MLflow,
IPython or Jupyter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Protocol, runtime_checkable

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
    """A source of energy readings for one or more domains."""

    name: str

    def domains(self) -> list[DomainInfo]:
        """The domains this sensor reports, fixed for its lifetime."""
        ...

    def read(self) -> dict[str, DomainReading]:
        """Read every domain now.  May raise; the sampler records a gap."""
        ...

    # Optional, for sensors read on every sample:
    #
    #     def read_values(self) -> tuple[tuple[float | None, float | None], ...]:
    #         """The same reading as read(): one ``(energy_j, power_w)`` pair per domain, in the
    #         order of domains(), without the dict and the DomainReading objects."""
    #
    # The sampler calls it instead of read() when a sensor has it (ten times a second, the
    # allocations of read() are a good part of the sampler's cost); read() stays the reference.
    #
    # Optional, for sensors that compute in-process and never block (the cpu-model estimate,
    # replay), which then say ``nonblocking = True`` and have both of:
    #
    #     sample: Callable[[], object] | None
    #         """A cheap, thread-safe call (a C function such as time.process_time) whose result
    #         is all the sensor needs to know about a moment; None if the clock is enough."""
    #
    #     def values_at(self, t: float, sample: object) -> tuple[tuple[float | None, float | None], ...]:
    #         """The read_values() reading as of sampler clock time ``t``, when ``sample()``
    #         returned ``sample``.  Called in time order, one call at a time."""
    #
    # The sampler thread then only records ``sample()`` and the time at each tick, and the
    # sensor's arithmetic runs later, in batches (Sampler.sync).  Any other sensor is read by
    # a reader thread of its own.

    def state(self) -> dict[str, str]:
        """Volatile facts worth recording at window start (e.g. temperature)."""
        ...

    def close(self) -> None:
        ...
