"""Intel/AMD RAPL energy counters through the Linux powercap sysfs.  Method ``counter``.

Layout read (``root`` defaults to ``/sys/class/powercap``)::

    intel-rapl:0/        name=package-0   energy_uj  max_energy_range_uj
    intel-rapl:0:0/      name=core        (inside package-0: skipped)
    intel-rapl:0:1/      name=uncore      (inside package-0: skipped)
    intel-rapl:0:2/      name=dram        -> dram0
    intel-rapl:1/        name=psys        (contains the packages: used only if there is no package zone)

RAPL domains nest (psys ⊃ package ⊃ core/uncore), so summing them double
counts.  We report ``package<N>`` and ``dram<N>`` per socket, skip ``core`` and
``uncore``, fall back to ``psys`` only when no package zone exists, and ignore
``intel-rapl-mmio:*`` zones, which expose the same package counter a second time.
Counters wrap at ``max_energy_range_uj``; reads unwrap them.  Not every decrease
is a wrap, though: a counter can also restart from 0 (a driver reload) or return a
bad value.  A decrease is taken as a wrap only if the zone could have drawn the
distance from the last value to the top of the range and on to the new value in
the time since the last read at :data:`MAX_ZONE_POWER_W` (plus one counter update
period); anything else is passed on as the decrease it is, which the sampler
records as a gap (and rebases if the counter counts up from its new base: see
``DomainSeries._ingest_decrease``).  A wrap counted on a read that the next reads
show to be a glitch (the counter is back at or above its value before the "wrap"
sooner than it could have gone round) is taken back.

Most current kernels make ``energy_uj`` readable by root only.  Discovery then
records a note with the fix; asking for ``rapl`` explicitly raises
:class:`SensorError` with the same fix.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .base import DomainInfo, DomainReading, SensorBase, SensorError, readings

DEFAULT_ROOT = "/sys/class/powercap"
#: RAPL counters update about every millisecond: effectively fresh at our read rates.
RAPL_UPDATE_PERIOD_S = 0.001
#: No RAPL zone draws more than this (W): the largest server packages are rated ~500 W.  Used only
#: to tell a wraparound from a reset: a decrease of ``energy_uj`` is a wrap only if the distance to
#: the top of the range and on to the new value fits in (time since the last read + one update
#: period) at this power.  Generous on purpose: a wrap taken for a reset costs a gap and a
#: sampler interval of energy, a reset taken for a wrap adds at most this power x that time.
MAX_ZONE_POWER_W = 2000.0
_NO_CHECK_UJ = 1 << 62  # above any energy_uj: no wrap to check

PERMISSION_FIX = (
    "run `sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj "
    "/sys/class/powercap/intel-rapl:*:*/energy_uj` (lasts until reboot), or make it permanent "
    "with a udev rule such as "
    "`SUBSYSTEM==\"powercap\", ACTION==\"add\", RUN+=\"/bin/chmod a+r /sys%p/energy_uj\"` "
    "in /etc/udev/rules.d/90-powercap.rules; until then CPU energy is a labelled estimate (cpu-model)"
)


#: Where the machine's CPU time is read for the packages' utilisation (tests point it elsewhere).
PROC_STAT = "/proc/stat"
#: How often that utilisation is read (seconds): reading and parsing /proc/stat costs tens of
#: microseconds, more than the counters, so not with every sample.
UTIL_PERIOD_S = 0.5


def proc_stat_busy(path: str | os.PathLike = PROC_STAT) -> tuple[int, int]:
    """``(busy, total)`` CPU time of the whole machine in clock ticks, from the ``cpu`` line of
    ``/proc/stat`` (busy: everything but ``idle`` and ``iowait``)."""
    with open(path) as f:
        line = f.readline()
    fields = line.split()
    if not fields or fields[0] != "cpu":
        raise ValueError(f"{path}: no cpu line")
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    total = sum(ticks)
    return total - ticks[3] - (ticks[4] if len(ticks) > 4 else 0), total


def read_sysfs(path: Path) -> str:
    """Read one sysfs attribute.  The hardware seam: tests point ``root`` at a tree in tmp_path, and
    replace this function where a file must answer as the kernel does (a counter that counts, a
    permission the root user would not see)."""
    with open(path) as f:
        return f.read()


@dataclass
class _Zone:
    domain: str
    kind: str
    path: Path
    zone_name: str
    max_range_uj: int
    last_raw_uj: int = -1
    last_t: float = 0.0  # when last_raw_uj was read (the sensor's clock)
    wraps: int = 0
    #: After a counted wrap: the raw value before it (else above any value) and when it was read.
    #: A read back at or above it sooner than the counter could have gone round takes the wrap back.
    wrapped_from_uj: int = _NO_CHECK_UJ
    wrapped_t: float = 0.0
    energy_path: Path = field(init=False)  # path / "energy_uj", read on every sample

    def __post_init__(self) -> None:
        self.energy_path = self.path / "energy_uj"


class RaplSensor(SensorBase):
    """RAPL package and DRAM counters for every socket.

    Build it with :func:`open_rapl` (explicit, raises) or :func:`discover_rapl` (never raises).
    ``clock`` (monotonic seconds) times the reads, to tell a wraparound from a reset.
    """

    name = "rapl"
    util_period_s = UTIL_PERIOD_S

    def __init__(self, zones: list[_Zone], root: str, clock=time.monotonic, stat_path: str | None = PROC_STAT):
        self._zones = zones
        self.root = root
        self._clock = clock
        self._lock = threading.Lock()
        #: ``/proc/stat``, for the machine's CPU utilisation (None: none reported)
        self.stat_path = stat_path
        self._stat_last: tuple[int, int] | None = None
        if stat_path is None:
            self.utilisation = None
        else:
            try:
                self._stat_last = proc_stat_busy(stat_path)
            except (OSError, ValueError):
                self.utilisation = None  # no /proc (not Linux): the capability is absent
        now = clock()
        for z in zones:
            z.last_t = now
        self._domains = [
            DomainInfo(
                name=z.domain,
                kind=z.kind,
                method="counter",
                sensor="rapl",
                update_period_s=RAPL_UPDATE_PERIOD_S,
                averaging_s=0.0,
                details={
                    "zone": z.zone_name,
                    "path": str(z.path),
                    "max_energy_range_uj": str(z.max_range_uj),
                },
            )
            for z in zones
        ]

    def domains(self) -> list[DomainInfo]:
        return list(self._domains)

    def read(self) -> dict[str, DomainReading]:
        return readings(self._domains, self.read_values())

    def read_values(self) -> tuple[tuple[float, None], ...]:
        """One ``(energy_j, None)`` pair per zone, in the order of :meth:`domains`.

        The energy is ``energy_uj`` unwrapped: it only goes down where ``energy_uj`` went down
        and was not a wrap (a reset or a bad read: see :meth:`_decrease`).
        """
        out: list[tuple[float, None]] = []
        with self._lock:
            now = self._clock()
            for z in self._zones:
                raw = int(read_sysfs(z.energy_path).strip())
                if raw < z.last_raw_uj:
                    self._decrease(z, raw, now)
                elif raw >= z.wrapped_from_uj:
                    self._back_above_wrap(z, raw, now)
                z.last_raw_uj = raw
                z.last_t = now
                total_uj = raw + z.wraps * z.max_range_uj
                out.append((total_uj * 1e-6, None))
        return tuple(out)

    def utilisation(self) -> tuple[float | None, ...] | None:
        """The machine's CPU utilisation since the previous call (``/proc/stat``: busy over total CPU
        time of all CPUs, every process), for each package (and psys) zone; None for DRAM zones.
        None when no CPU time passed."""
        busy, total = proc_stat_busy(self.stat_path)
        last = self._stat_last
        self._stat_last = (busy, total)
        if last is None or total <= last[1]:
            return None
        u = min(1.0, max(0.0, (busy - last[0]) / (total - last[1])))
        return tuple(None if z.kind == "dram" else u for z in self._zones)

    @staticmethod
    def _could_cover_uj(since: float, now: float) -> float:
        """The most energy the zone can have drawn from ``since`` to ``now`` (µJ)."""
        return (now - since + RAPL_UPDATE_PERIOD_S) * MAX_ZONE_POWER_W * 1e6

    def _decrease(self, z: _Zone, raw: int, now: float) -> None:
        """``energy_uj`` went down: a wrap if the zone could have gone over the top since the
        last read, else a reset or a bad read, left as the decrease it is (the sampler makes it
        a gap)."""
        if z.max_range_uj - z.last_raw_uj + raw <= self._could_cover_uj(z.last_t, now):
            z.wraps += 1  # wrapped at max_energy_range_uj
            z.wrapped_from_uj, z.wrapped_t = z.last_raw_uj, z.last_t

    def _back_above_wrap(self, z: _Zone, raw: int, now: float) -> None:
        """After a counted wrap the counter reads at or above its value before it: fine if it had
        the time to go round, else the read taken for a wrap was a glitch: the wrap is taken back."""
        if z.max_range_uj - z.wrapped_from_uj + raw > self._could_cover_uj(z.wrapped_t, now):
            z.wraps -= 1
        z.wrapped_from_uj = _NO_CHECK_UJ

    def state(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


_ZONE_RE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")


def _scan(root: Path) -> tuple[list[_Zone], list[str]]:
    """Pick non-overlapping zones.  Returns (zones, problems); raises nothing for a missing tree."""
    problems: list[str] = []
    if not root.is_dir():
        return [], [f"RAPL: {root} does not exist (no powercap driver, not Linux, or a container without /sys)"]
    tops: dict[int, tuple[str, Path]] = {}
    subs: dict[int, list[tuple[str, Path]]] = {}
    for entry in sorted(root.iterdir()):
        m = _ZONE_RE.match(entry.name)
        if not m:
            continue  # intel-rapl-mmio:* duplicates the package counter; other control types are not RAPL
        try:
            zname = read_sysfs(entry / "name").strip()
        except OSError as exc:
            problems.append(f"RAPL: cannot read {entry / 'name'}: {exc}")
            continue
        top = int(m.group(1))
        if m.group(2) is None:
            tops[top] = (zname, entry)
        else:
            subs.setdefault(top, []).append((zname, entry))
    chosen: list[tuple[str, str, Path, str]] = []  # (domain, kind, path, zone name)
    packages = {i: v for i, v in tops.items() if v[0].startswith("package")}
    for i, (zname, path) in sorted(packages.items()):
        m = re.match(r"package-(\d+)", zname)
        socket = int(m.group(1)) if m else i
        chosen.append((f"package{socket}", "cpu", path, zname))
        for sname, spath in sorted(subs.get(i, [])):
            if sname == "dram":
                chosen.append((f"dram{socket}", "dram", spath, sname))
            # core / uncore are inside the package: skipped to avoid double counting
    for i, (zname, path) in sorted(tops.items()):
        if zname == "dram":  # some platforms expose DRAM as a top-level zone
            n = sum(1 for c in chosen if c[1] == "dram")
            chosen.append((f"dram{n}", "dram", path, zname))
    if not packages:
        for i, (zname, path) in sorted(tops.items()):
            if zname == "psys":
                chosen.append(("psys", "cpu", path, zname))
                break
    if not chosen and not problems:
        problems.append(f"RAPL: no package, dram or psys zone under {root}")
    return [
        _Zone(domain=d, kind=k, path=p, zone_name=zn, max_range_uj=0) for d, k, p, zn in chosen
    ], problems


def open_rapl(root: str | os.PathLike = DEFAULT_ROOT, *, clock=time.monotonic,
              stat_path: str | None = PROC_STAT) -> RaplSensor:
    """Open RAPL explicitly.  ``clock``: monotonic seconds, to time the reads (tests inject one);
    ``stat_path``: where the machine's CPU time is read for the utilisation (None: no utilisation).

    Raises:
        SensorError: no usable zone, or energy_uj not readable (the message gives the fix).
    """
    rootp = Path(root)
    zones, problems = _scan(rootp)
    if not zones:
        raise SensorError("; ".join(problems) or f"RAPL: nothing usable under {rootp}")
    usable: list[_Zone] = []
    for z in zones:
        try:
            z.max_range_uj = int(read_sysfs(z.path / "max_energy_range_uj").strip())
            z.last_raw_uj = int(read_sysfs(z.path / "energy_uj").strip())
        except PermissionError as exc:
            raise SensorError(
                f"RAPL: permission denied reading {z.path / 'energy_uj'} ({exc.strerror}); {PERMISSION_FIX}"
            ) from exc
        except (OSError, ValueError) as exc:
            problems.append(f"RAPL: cannot read {z.path}: {exc}")
            continue
        usable.append(z)
    if not usable:
        raise SensorError("; ".join(problems))
    return RaplSensor(usable, str(rootp), clock=clock, stat_path=stat_path)


def discover_rapl(root: str | os.PathLike = DEFAULT_ROOT) -> tuple[RaplSensor | None, list[str]]:
    """Like :func:`open_rapl` but never raises: returns ``(sensor or None, notes)``."""
    try:
        return open_rapl(root), []
    except SensorError as exc:
        return None, [str(exc)]
