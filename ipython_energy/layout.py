"""The MLflow layout (docs/metrics.md) as pure functions: a finished Measurement in, metric rows and tags out."""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping

from .measurement import Measurement

_SAFE = re.compile(r"[^A-Za-z0-9_]+")


def key_part(name: str) -> str:
    """A user-given unit or stage name made safe for a metric key (``tokens/s`` → ``tokens_s``)."""
    return _SAFE.sub("_", name.strip()).strip("_").lower() or "unnamed"


def run_metrics(m: Measurement, *, units: Mapping[str, float] | None = None,
                stages: Mapping[str, tuple[float, float]] | None = None) -> dict[str, float]:
    """The final metrics of a run (step 0)."""
    out: dict[str, float] = {
        "energy_j": m.energy_j,
        "duration_s": m.duration_s,
        "power_mean_w": m.power_mean_w,
        "power_peak_w": m.power_peak_w,
        "energy_idle_j": m.idle_j,
        "energy_net_j": m.net_j,
    }
    for domain, joules in m.domains.items():
        out[f"energy_{key_part(domain)}_j"] = joules
    if m.facility_j is not None:
        out["energy_facility_j"] = m.facility_j
    if m.co2e_g is not None:
        out["co2e_g"] = m.co2e_g
    for unit, n in (units or {}).items():
        out[f"units_{key_part(unit)}"] = n
        if n > 0:
            out[f"energy_per_{key_part(unit)}_j"] = m.energy_j / n
    for stage, (joules, seconds) in (stages or {}).items():
        out[f"stage_{key_part(stage)}_energy_j"] = joules
        out[f"stage_{key_part(stage)}_duration_s"] = seconds
    return {k: v for k, v in out.items() if v is not None and math.isfinite(v)}


def cell_metrics(m: Measurement) -> dict[str, float]:
    """Per-cell metrics, logged with step = IPython execution count."""
    return {
        "cell_energy_j": m.energy_j,
        "cell_duration_s": m.duration_s,
        "cell_power_mean_w": m.power_mean_w,
        "cell_power_peak_w": m.power_peak_w,
    }


def provenance_tags(m: Measurement, *, idle_source: str, unit: str | None = None) -> dict[str, str]:
    """Tags that say how the run's numbers were obtained."""
    prov = m.provenance
    gaps = "; ".join(
        f"{name}: {g.start_s:.2f}-{g.end_s:.2f} s {g.reason}" for name, p in prov.items() for g in p.gaps
    )
    tags = {
        "energy.methods": ",".join(f"{name}={p.method}" for name, p in prov.items()),
        "energy.sensors": ",".join(sorted({p.sensor for p in prov.values()})),
        "energy.estimated": "true" if m.estimated else "false",
        "energy.interval_s": f"{min((p.interval_s for p in prov.values()), default=0):g}",
        "energy.coverage": f"{m.coverage:.3f}",
        "energy.gaps": gaps[:4000],
        "energy.short_window": "true" if m.short_window else "false",
        "energy.idle_source": idle_source,
    }
    gpus = [p for p in prov.values() if p.sensor == "nvml"]
    models = sorted({p.details["model"] for p in gpus if p.details.get("model")})
    drivers = sorted({p.details["driver"] for p in gpus if p.details.get("driver")})
    if models:
        tags["energy.gpu_model"] = ",".join(models)
    if drivers:
        tags["energy.gpu_driver"] = ",".join(drivers)
    estimates = "; ".join(
        f"{name}: {p.details.get('model', p.sensor)}"
        + "".join(f", {k}={v}" for k, v in sorted(p.details.items()) if k != "model")
        for name, p in prov.items() if p.method == "estimated"
    )
    if estimates:
        tags["energy.estimate_model"] = estimates[:5000]
    temps = ",".join(
        f"{domain}={state['temperature_c']}" for domain, state in m.state.items() if "temperature_c" in state
    )
    if temps:
        tags["energy.start_temperature_c"] = temps
    if m.pue is not None:
        tags["energy.pue"] = f"{m.pue:g}"
    if m.carbon_g_per_kwh is not None:
        tags["energy.carbon_g_per_kwh"] = f"{m.carbon_g_per_kwh:g}"
    if unit:
        tags["energy.unit"] = unit
    return tags


def rows(metrics: Mapping[str, float], step: int, t_ms: int) -> list[list]:
    """Metric rows ``[key, value, step, timestamp_ms]`` as the writer's events carry them."""
    return [[k, float(v), int(step), int(t_ms)] for k, v in metrics.items()]


def combine_stage(stages: dict[str, tuple[float, float]], name: str, m: Measurement) -> None:
    joules, seconds = stages.get(name, (0.0, 0.0))
    stages[name] = (joules + m.energy_j, seconds + m.duration_s)


def metric_names(ms: Iterable[Mapping[str, float]]) -> set[str]:
    return {k for m in ms for k in m}
