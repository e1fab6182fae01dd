"""Sensor discovery.

``discover()`` never imports a vendor library at module import, and never raises
for the default ``auto`` spec: problems become :attr:`Discovery.notes`.  Naming a
backend explicitly (``nvml``, ``rapl``, ``cpu-model``, ``replay:PATH``) raises
:class:`SensorError` with the fix when it cannot be used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from .base import DomainInfo, DomainReading, Sensor, SensorBase, SensorError

__all__ = [
    "Discovery",
    "DomainInfo",
    "DomainReading",
    "Sensor",
    "SensorBase",
    "SensorError",
    "discover",
    "ENV_VAR",
]

#: Environment variable read when no spec is given.
ENV_VAR = "IPYTHON_ENERGY_SENSORS"
#: Environment variable overriding the powercap root (tests, unusual mounts).
RAPL_ROOT_ENV_VAR = "IPYTHON_ENERGY_RAPL_ROOT"


@dataclass
class Discovery:
    """What :func:`discover` found: the sensors to use and notes for the user."""

    sensors: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def domains(self) -> list[DomainInfo]:
        return [d for s in self.sensors for d in s.domains()]

    def close(self) -> None:
        for s in self.sensors:
            s.close()


def _rapl_root(rapl_root: str | None) -> str:
    from .rapl import DEFAULT_ROOT

    return rapl_root or os.environ.get(RAPL_ROOT_ENV_VAR) or DEFAULT_ROOT


def discover(
    spec: str | None = None,
    *,
    cpu_model_options: Mapping[str, float] | None = None,
    rapl_root: str | None = None,
) -> Discovery:
    """Find the sensors to measure with.

    Args:
        spec: ``None`` or ``"auto"`` (default: ``$IPYTHON_ENERGY_SENSORS`` or ``auto``): NVML GPUs
            plus RAPL, and the ``cpu-model`` estimate only when no RAPL CPU domain is readable.
            ``"replay:PATH"`` replays a CSV trace instead of touching hardware.  A comma list such
            as ``"nvml,rapl,cpu-model"`` asks for exactly those backends (explicit: raises).
        cpu_model_options: Fields of :class:`~ipython_energy.sensors.cpu_model.CpuModelOptions`.
        rapl_root: Powercap root (default ``$IPYTHON_ENERGY_RAPL_ROOT`` or ``/sys/class/powercap``).

    Raises:
        SensorError: only for explicitly named backends that cannot be used.
    """
    if spec is None:
        spec = os.environ.get(ENV_VAR) or "auto"
    spec = spec.strip()
    out = Discovery()
    if spec in ("", "auto"):
        _auto(out, cpu_model_options, _rapl_root(rapl_root))
        return out
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    try:
        for part in parts:
            _explicit(out, part, cpu_model_options, _rapl_root(rapl_root))
    except SensorError:
        out.close()
        raise
    names = [d.name for d in out.domains]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        out.close()
        raise SensorError(f"sensors {spec!r} report the same domain twice: {', '.join(dupes)}")
    return out


def _auto(out: Discovery, cpu_model_options, rapl_root: str) -> None:
    from .cpu_model import CpuModelSensor
    from .nvml import discover_nvml
    from .rapl import discover_rapl

    gpus, notes = discover_nvml()
    out.sensors.extend(gpus)
    out.notes.extend(notes)
    rapl, notes = discover_rapl(rapl_root)
    out.notes.extend(notes)
    has_cpu = False
    if rapl is not None:
        out.sensors.append(rapl)
        has_cpu = any(d.kind == "cpu" for d in rapl.domains())
    if not has_cpu:
        out.sensors.append(CpuModelSensor(cpu_model_options))
        out.notes.append(
            "CPU: no readable RAPL package counter, so CPU energy is a labelled estimate "
            "(cpu-model, from this process's CPU time); see docs/sensors.md"
        )


def _explicit(out: Discovery, part: str, cpu_model_options, rapl_root: str) -> None:
    if part.startswith("replay:"):
        from .replay import ReplaySensor

        path = part[len("replay:"):]
        if not os.path.isfile(path):
            raise SensorError(f"replay: trace file {path!r} not found")
        out.sensors.append(ReplaySensor(path))
    elif part == "nvml":
        from .nvml import open_nvml

        out.sensors.extend(open_nvml())
    elif part == "rapl":
        from .rapl import open_rapl

        out.sensors.append(open_rapl(rapl_root))
    elif part in ("cpu-model", "cpu_model"):
        from .cpu_model import CpuModelSensor

        out.sensors.append(CpuModelSensor(cpu_model_options))
    else:
        raise SensorError(
            f"unknown sensor {part!r}: use auto, nvml, rapl, cpu-model or replay:PATH (comma-separated)"
        )
