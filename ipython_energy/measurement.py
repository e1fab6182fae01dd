"""The finished result of a measurement window: a frozen value with units in its field names."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class Gap:
    """A stretch of a window during which a domain had no good readings.

    Attributes:
        start_s: Seconds from the window's start.
        end_s: Seconds from the window's start.
        reason: Why (``raised: OSError(...)``, ``hung``, ``nan``, ``decreasing``, ``vanished``).
    """

    start_s: float
    end_s: float
    reason: str


@dataclass(frozen=True)
class DomainProvenance:
    """How one domain's number in one window was obtained.

    Attributes:
        method: ``counter``, ``polled``, ``estimated`` or ``replay``.
        sensor: The backend that produced it (``nvml``, ``rapl``, ``cpu-model``, ``replay``).
        interval_s: The sampler interval in force.
        update_period_s: The sensor's own update period.
        coverage: Fraction (0-1) of the window covered by good readings.
        gaps: Stretches without good readings.
        short_window: The window was shorter than the sensor's update period, so
            the energy was interpolated from power rather than differenced.
        details: Static sensor facts (model, driver, power limit, TDP, …).
    """

    method: str
    sensor: str
    interval_s: float
    update_period_s: float
    coverage: float = 1.0
    gaps: tuple[Gap, ...] = ()
    short_window: bool = False
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def estimated(self) -> bool:
        return self.method == "estimated"


@dataclass(frozen=True)
class Measurement:
    """Energy of one window (a cell, a stage, a run, a sweep).

    Attributes:
        label: What was measured (cell ``In[12]``, run name, stage name).
        energy_j: Gross energy over all domains, in joules.
        duration_s: Window length on the monotonic clock.
        power_mean_w: ``energy_j / duration_s``.
        power_peak_w: Highest power seen in the window (sampled), in watts.
        domains: Domain name → gross joules.
        idle_j: What the idle baseline power would have drawn over the window.
        net_j: ``energy_j - idle_j`` (never below 0).
        provenance: Domain name → how that number was obtained.
        started_at: Wall-clock start, seconds since the epoch (for display only).
        state: Volatile facts at window start (temperatures, …) by domain.
        pue: Power usage effectiveness factor, when configured.
        carbon_g_per_kwh: Grid carbon intensity, when configured.
        running: True for a snapshot of a window still open.
        domains_low_util_j: Domain name → joules spent while the domain's utilisation was below
            ``low_util_threshold``; only domains whose sensor reports utilisation (a domain
            without it is absent, not 0 J).  See docs/sensors.md for which reading applies.
        domains_low_util_s: Domain name → seconds spent below the threshold (same domains).
        low_util_threshold: The threshold as a busy fraction (0.3 is 30 %), or None when no
            domain reported utilisation.
        stages: Stage name → ``(energy_j, duration_s)`` summed over the run (a run's
            measurement only; empty otherwise).
    """

    label: str
    energy_j: float
    duration_s: float
    power_mean_w: float
    power_peak_w: float
    domains: Mapping[str, float]
    idle_j: float
    net_j: float
    provenance: Mapping[str, DomainProvenance]
    started_at: float = 0.0
    state: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    pue: float | None = None
    carbon_g_per_kwh: float | None = None
    running: bool = False
    domains_low_util_j: Mapping[str, float] = field(default_factory=dict)
    domains_low_util_s: Mapping[str, float] = field(default_factory=dict)
    low_util_threshold: float | None = None
    stages: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    # ---- derived -------------------------------------------------------------------------
    @property
    def estimated(self) -> bool:
        """True when any domain's number is a model estimate rather than a measurement."""
        return any(p.estimated for p in self.provenance.values())

    @property
    def short_window(self) -> bool:
        return any(p.short_window for p in self.provenance.values())

    @property
    def coverage(self) -> float:
        """The worst coverage over all domains (1.0 when there are none)."""
        return min((p.coverage for p in self.provenance.values()), default=1.0)

    @property
    def has_gaps(self) -> bool:
        return any(p.gaps for p in self.provenance.values())

    @property
    def energy_low_util_j(self) -> float | None:
        """Joules spent at low utilisation, over the domains that report utilisation (None when
        none does)."""
        if not self.domains_low_util_j:
            return None
        return sum(self.domains_low_util_j.values())

    @property
    def low_util_s(self) -> float | None:
        """Seconds below the utilisation threshold: the longest of the domains' (times of
        different domains are not added up); None when no domain reports utilisation."""
        if not self.domains_low_util_s:
            return None
        return max(self.domains_low_util_s.values())

    def low_util_note(self) -> str | None:
        """``41 % of gpu0 energy at < 30 % utilisation`` for the domain with the most energy at low
        utilisation, when that matters: at least :data:`LOW_UTIL_SHOWN` of the domain's energy,
        on a domain with at least :data:`LOW_UTIL_SHOWN` of the window's.  None otherwise."""
        if not self.domains_low_util_j or self.low_util_threshold is None or self.energy_j <= 0:
            return None
        best = None
        for name, low in self.domains_low_util_j.items():
            total = self.domains.get(name, 0.0)
            if total <= 0 or total < LOW_UTIL_SHOWN * self.energy_j or low < LOW_UTIL_SHOWN * total:
                continue
            if best is None or low > best[1]:
                best = (name, low, total)
        if best is None:
            return None
        name, low, total = best
        return (f"{round(100 * low / total)} % of {name} energy at < "
                f"{self.low_util_threshold * 100:g} % utilisation")

    def stages_text(self) -> str | None:
        """``data 1.2 kJ (31 %) · train 2.6 kJ (67 %)``: the run's stages with their share of its
        energy, or None without stages."""
        if not self.stages:
            return None
        return " · ".join(
            f"{name} {format_energy(j)}" + (f" ({round(100 * j / self.energy_j)} %)" if self.energy_j > 0 else "")
            for name, (j, _s) in self.stages.items())

    @property
    def facility_j(self) -> float | None:
        return None if self.pue is None else self.energy_j * self.pue

    @property
    def co2e_g(self) -> float | None:
        if self.carbon_g_per_kwh is None:
            return None
        energy = self.facility_j if self.facility_j is not None else self.energy_j
        return energy / 3.6e6 * self.carbon_g_per_kwh

    # ---- display -------------------------------------------------------------------------
    def summary(self) -> str:
        """One line: joules, duration, mean/peak power and the per-domain split with methods."""
        parts = [
            f"⚡ {format_energy(self.energy_j)}"
            + (" (estimated)" if self.estimated else ""),
            f"in {format_duration(self.duration_s)}",
            f"mean {self.power_mean_w:.1f} W, peak {self.power_peak_w:.1f} W",
        ]
        if self.domains:
            split = ", ".join(
                f"{name} {format_energy(j)} {self.provenance[name].method}"
                if name in self.provenance
                else f"{name} {format_energy(j)}"
                for name, j in self.domains.items()
            )
            parts.append(f"[{split}]")
        stages = self.stages_text()
        if stages:
            parts.append(stages)
        low = self.low_util_note()
        if low:
            parts.append(low)
        flags = []
        if self.short_window:
            flags.append("short window: interpolated")
        if self.has_gaps:
            flags.append(f"gaps, coverage {self.coverage:.0%}")
        if self.co2e_g is not None:
            flags.append(f"{self.co2e_g:.2g} gCO2e")
        line = " · ".join(parts)
        if flags:
            line += " · " + "; ".join(flags)
        return line

    def __str__(self) -> str:
        return self.summary()

    def _repr_pretty_(self, p, cycle) -> None:  # IPython pretty printer
        p.text(self.summary() if not cycle else "Measurement(...)")

    def _repr_html_(self) -> str:
        esc = html.escape
        low = self.domains_low_util_j
        low_head = (f"<th>at &lt; {self.low_util_threshold * 100:g} % utilisation</th>"
                    if low and self.low_util_threshold is not None else "")

        def low_cell(name: str) -> str:
            if not low_head:
                return ""
            j = low.get(name)
            total = self.domains.get(name, 0.0)
            if j is None:
                return "<td></td>"
            share = f" ({round(100 * j / total)} %)" if total > 0 else ""
            return f"<td style='text-align:right'>{esc(format_energy(j) + share)}</td>"

        rows = "".join(
            "<tr><td>{}</td><td style='text-align:right'>{}</td>{}<td>{}</td><td>{}</td>"
            "<td style='text-align:right'>{:.0%}</td><td>{}</td></tr>".format(
                esc(name),
                esc(format_energy(j)),
                low_cell(name),
                esc(self.provenance[name].method) if name in self.provenance else "",
                esc(self.provenance[name].sensor) if name in self.provenance else "",
                self.provenance[name].coverage if name in self.provenance else 1.0,
                esc(
                    "; ".join(
                        f"{g.start_s:.2f}-{g.end_s:.2f} s {g.reason}"
                        for g in self.provenance[name].gaps
                    )
                    if name in self.provenance
                    else ""
                ),
            )
            for name, j in self.domains.items()
        )
        stages = ""
        if self.stages:
            stage_rows = "".join(
                "<tr><td>{}</td><td style='text-align:right'>{}</td><td style='text-align:right'>{}</td>"
                "<td style='text-align:right'>{}</td></tr>".format(
                    esc(name), esc(format_energy(j)),
                    f"{round(100 * j / self.energy_j)} %" if self.energy_j > 0 else "",
                    esc(format_duration(s)))
                for name, (j, s) in self.stages.items())
            stages = ("<table class='ipython-energy-stages'><thead><tr><th>stage</th><th>energy</th>"
                      f"<th>share</th><th>duration</th></tr></thead><tbody>{stage_rows}</tbody></table>")
        return (
            "<div class='ipython-energy-measurement'>"
            f"<p><b>{esc(self.label)}</b>: {esc(self.summary())}</p>"
            f"<table><thead><tr><th>domain</th><th>energy</th>{low_head}<th>method</th><th>sensor</th>"
            f"<th>coverage</th><th>gaps</th></tr></thead><tbody>{rows}</tbody></table>"
            f"{stages}"
            f"<p>idle baseline {esc(format_energy(self.idle_j))}, "
            f"net {esc(format_energy(self.net_j))}</p></div>"
        )


#: The summary line names a domain's energy at low utilisation when it is at least this share of the
#: domain's energy and the domain at least this share of the window's (see ``low_util_note``).
LOW_UTIL_SHOWN = 0.1


def format_energy(joules: float | None) -> str:
    """``12.5 mJ``, ``512 J``, ``3.4 kJ``, ``1.2 MJ``; a missing or non-finite value is ``–``."""
    if joules is None or not math.isfinite(joules):
        return "\u2013"
    a = abs(joules)
    if a >= 1e9:
        return f"{joules / 1e9:.3g} GJ"
    if a >= 1e6:
        return f"{joules / 1e6:.3g} MJ"
    if a >= 1e3:
        return f"{joules / 1e3:.3g} kJ"
    if a >= 1:
        return f"{joules:.3g} J"
    return f"{joules * 1e3:.3g} mJ"


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{int(m)} min {s:.0f} s"
    h, m = divmod(m, 60)
    return f"{int(h)} h {int(m)} min"
