"""CPU power *estimate* for machines where no CPU energy sensor is readable.  Method ``estimated``.

The model (documented in ``docs/sensors.md``)::

    u(t)  = d(process CPU seconds) / d(wall seconds)      # busy logical CPUs used by this process,
                                                            # all its threads, clamped to [0, n_cpus]
    P(t)  = n_cpus * idle_w_per_cpu + u(t) * (active_w_per_cpu - idle_w_per_cpu)
    E(t)  = integral of P over the monotonic clock          # the cumulative energy_j we report

``process CPU seconds`` is :func:`time.process_time` (user + system time of every
thread of this process; children are not included).  Defaults are 1.5 W idle and
8 W busy per logical CPU; with ``tdp_w`` the busy figure becomes ``tdp_w / n_cpus``
and the idle figure ``idle_fraction * tdp_w / n_cpus``.

It is a labelled first-order estimate: it knows nothing about frequency, vector
units, memory traffic or other processes, and two loads with the same CPU time
can differ 2-3x in real power.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from .base import DomainInfo, DomainReading, SensorBase, readings

#: Default watts per logical CPU when idle (package floor share, uncore included).
DEFAULT_IDLE_W_PER_CPU = 1.5
#: Default watts per logical CPU when fully busy.
DEFAULT_ACTIVE_W_PER_CPU = 8.0
#: With ``tdp_w``: idle power as a fraction of TDP.
DEFAULT_IDLE_FRACTION = 0.2


def _visible_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CpuModelOptions:
    """Parameters of the CPU estimate.

    Attributes:
        idle_w_per_cpu: Watts per logical CPU when idle.
        active_w_per_cpu: Watts per logical CPU when busy.
        tdp_w: If set, overrides both: busy = ``tdp_w / n_cpus``, idle = ``idle_fraction`` of that.
        idle_fraction: Idle power as a fraction of TDP (only with ``tdp_w``).
        n_cpus: Logical CPUs the model covers (default: CPUs this process may run on).
    """

    idle_w_per_cpu: float = DEFAULT_IDLE_W_PER_CPU
    active_w_per_cpu: float = DEFAULT_ACTIVE_W_PER_CPU
    tdp_w: float | None = None
    idle_fraction: float = DEFAULT_IDLE_FRACTION
    n_cpus: int | None = None

    @classmethod
    def from_mapping(cls, options: "CpuModelOptions | Mapping[str, float] | None") -> "CpuModelOptions":
        if options is None:
            return cls()
        if isinstance(options, CpuModelOptions):
            return options
        aliases = {"idle_w_per_core": "idle_w_per_cpu", "active_w_per_core": "active_w_per_cpu"}
        fields = set(cls.__dataclass_fields__)
        kw = {}
        for key, value in dict(options).items():
            key = aliases.get(key, key)
            if key not in fields:
                raise ValueError(f"unknown cpu-model option {key!r}; known: {', '.join(sorted(fields))}")
            if value is not None:  # None means "use the default"
                kw[key] = value
        return cls(**kw)

    def resolved(self) -> tuple[int, float, float]:
        """``(n_cpus, idle_w_per_cpu, active_w_per_cpu)`` after applying ``tdp_w``."""
        n = self.n_cpus or _visible_cpus()
        if self.tdp_w is not None:
            active = self.tdp_w / n
            return n, self.idle_fraction * active, active
        return n, self.idle_w_per_cpu, self.active_w_per_cpu


class CpuModelSensor(SensorBase):
    """Labelled estimate of CPU power from this process's CPU time.  Domain ``cpu``.

    Args:
        options: Model parameters (:class:`CpuModelOptions` or a mapping of its fields).
        clock: Monotonic clock (seconds); the sampler's, when a sampler reads the sensor (it
            passes its own tick times to :meth:`values_at`).
        cpu_time: Process CPU seconds, all threads (default :func:`time.process_time`).
    """

    name = "cpu-model"
    #: Utilisation every half second (it is the CPU-time difference over that stretch).
    util_period_s = 0.5
    #: Computes in-process and never blocks: the sampler may read it on its own thread.
    nonblocking = True

    def __init__(
        self,
        options: CpuModelOptions | Mapping[str, float] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        cpu_time: Callable[[], float] = time.process_time,
    ):
        self.options = CpuModelOptions.from_mapping(options)
        self.n_cpus, self.idle_w_per_cpu, self.active_w_per_cpu = self.options.resolved()
        if self.active_w_per_cpu < self.idle_w_per_cpu or self.idle_w_per_cpu < 0:
            raise ValueError("cpu-model needs 0 <= idle_w_per_cpu <= active_w_per_cpu")
        self._clock = clock
        self._cpu_time = cpu_time
        #: What the sampler records at every tick (the process's CPU seconds: one cheap call) and
        #: hands to :meth:`values_at` later; the arithmetic waits for that.
        self.sample = cpu_time
        # power_for() unrolled for read(), which runs on every sample
        self._n_cpus_f = float(self.n_cpus)
        self._idle_total_w = self.n_cpus * self.idle_w_per_cpu
        self._busy_w_per_cpu = self.active_w_per_cpu - self.idle_w_per_cpu
        self._t = clock()
        self._cpu = cpu_time()
        self._energy_j = 0.0
        self._power_w = self.n_cpus * self.idle_w_per_cpu
        self._util_from = (self._t, self._cpu)  # (time, CPU seconds) at the last utilisation() call
        details = {
            "model": "n_cpus*idle_w + busy_cpus*(active_w-idle_w); busy_cpus from process CPU time",
            "n_cpus": str(self.n_cpus),
            "idle_w_per_cpu": f"{self.idle_w_per_cpu:g}",
            "active_w_per_cpu": f"{self.active_w_per_cpu:g}",
        }
        if self.options.tdp_w is not None:
            details["tdp_w"] = f"{self.options.tdp_w:g}"
        self._domain = DomainInfo(
            name="cpu",
            kind="cpu",
            method="estimated",
            sensor="cpu-model",
            update_period_s=0.0,
            averaging_s=0.0,
            details=details,
        )

    def power_for(self, busy_cpus: float) -> float:
        """Model power in watts for a number of busy logical CPUs."""
        u = min(max(busy_cpus, 0.0), float(self.n_cpus))
        return self.n_cpus * self.idle_w_per_cpu + u * (self.active_w_per_cpu - self.idle_w_per_cpu)

    def domains(self) -> list[DomainInfo]:
        return [self._domain]

    def read(self) -> dict[str, DomainReading]:
        return readings(self.domains(), self.read_values())

    def read_values(self) -> tuple[tuple[float, float]]:
        """Integrate the model up to now: ``((energy_j, power_w),)``."""
        return self.values_at(self._clock(), self._cpu_time())

    def values_at(self, t: float, cpu: float) -> tuple[tuple[float, float]]:
        """Integrate the model up to clock time ``t``, when the process had used ``cpu`` CPU
        seconds (what :attr:`sample` returned then): ``((energy_j, power_w),)``.

        The sampler records ``sample()`` at every tick and calls this later, in time order, from
        one thread at a time; so does :meth:`read_values`.  Not safe from two threads at once.
        """
        dt = t - self._t
        if dt > 0:
            busy = (cpu - self._cpu) / dt
            if busy < 0.0:
                busy = 0.0
            elif busy > self._n_cpus_f:
                busy = self._n_cpus_f
            power = self._idle_total_w + busy * self._busy_w_per_cpu
            self._power_w = power
            self._energy_j += power * dt
            self._t, self._cpu = t, cpu
        return ((self._energy_j, self._power_w),)

    def utilisation(self) -> tuple[float] | None:
        """``(busy_fraction,)``: this process's CPU time since the previous call, up to the last
        reading, as a share of the CPUs it may use (the model's ``busy_cpus / n_cpus``); None when no
        time passed.  Not the machine's: other processes are not included.  The sampler calls it
        every :attr:`util_period_s`, so the sample of every tick does no more than before."""
        t0, cpu0 = self._util_from
        dt = self._t - t0
        if dt <= 0:
            return None
        self._util_from = (self._t, self._cpu)
        busy = (self._cpu - cpu0) / dt / self._n_cpus_f
        return (0.0 if busy < 0.0 else 1.0 if busy > 1.0 else busy,)

    def state(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass
