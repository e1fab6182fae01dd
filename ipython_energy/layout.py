"""The MLflow layout (docs/metrics.md) as pure functions, both ways.

Writing: a finished Measurement in, metric rows and tags out. Reading: an MLflow run in, the
plain row or sweep header that :mod:`ipython_energy.rollup` takes.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from .measurement import Measurement
from .rollup import number, whole

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
    if m.domains_low_util_j:  # only domains that report utilisation: absent, never 0 J, for the others
        out["energy_low_util_j"] = m.energy_low_util_j
        out["low_util_s"] = m.low_util_s
        for domain, joules in m.domains_low_util_j.items():
            out[f"energy_{key_part(domain)}_low_util_j"] = joules
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
    limits = sorted({p.details["power_limit_w"] for p in gpus if p.details.get("power_limit_w")})
    if limits:
        tags["energy.gpu_power_limit_w"] = ",".join(limits)
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
    if m.low_util_threshold is not None and m.domains_low_util_j:
        tags["energy.low_util_threshold"] = f"{m.low_util_threshold * 100:g}"
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


# ---------------------------------------------------------------------------------------
# reading: MLflow runs as plain rows
# ---------------------------------------------------------------------------------------
#: MLflow run status -> the four states the sidebar colours.
STATUS = {
    "RUNNING": "running",
    "SCHEDULED": "running",
    "FINISHED": "finished",
    "FAILED": "failed",
    "KILLED": "killed",
}

#: Run tags shown as provenance on hover (tag -> key in the run row's ``provenance``).
PROVENANCE_TAGS = {
    "energy.methods": "methods",
    "energy.sensors": "sensors",
    "energy.coverage": "coverage",
    "energy.estimated": "estimated",
    "energy.interval_s": "interval_s",
    "energy.gaps": "gaps",
    "energy.short_window": "short_window",
    "energy.idle_source": "idle_source",
    "energy.host": "host",
    "energy.gpu_model": "gpu_model",
    "energy.start_temperature_c": "start_temperature_c",
}


def run_row(run: Any) -> dict[str, Any]:
    """One MLflow child run (an ``mlflow.entities.Run``) as a plain row dict.

    The row is what :func:`ipython_energy.rollup.build_sweep_data` takes: ``run_id``, ``kind`` (``run``,
    or ``group``: a group of repeats' parent, no run of its sweep), ``name``,
    ``status`` (running/finished/failed/killed), ``run_index`` (the ``energy.run_index`` tag),
    ``energy_j`` (final), ``live_energy_j`` (latest live value), ``duration_s``,
    ``power_mean_w``, ``start_time_ms``, ``end_time_ms``, ``params``, ``provenance``,
    ``energy_low_util_j`` (None when no domain reported utilisation) and ``low_util_threshold``
    (per cent, the ``energy.low_util_threshold`` tag), ``host`` / ``session`` / ``pid`` (the
    ``energy.host`` / ``energy.session`` / ``energy.pid`` tags, None when absent), ``kind``
    (``energy.kind``: ``run``, or ``group`` for a group of repeats' parent, which is no run of the
    sweep), ``group`` (the ``energy.group_uid`` tag, else ``energy.group``; None outside a group)
    and ``warmup``.
    """
    info, data = run.info, run.data
    metrics, tags = data.metrics, data.tags
    return {
        "run_id": info.run_id,
        "kind": tags.get("energy.kind", "run"),
        "name": info.run_name or tags.get("mlflow.runName") or info.run_id[:8],
        "status": STATUS.get(info.status, info.status.lower()),
        "run_index": whole(tags.get("energy.run_index")),
        "energy_j": number(metrics.get("energy_j")),
        "live_energy_j": number(metrics.get("live_energy_j")),
        "live_power_w": number(metrics.get("live_power_w")),
        # its part of the sweep's energy in runs, and the between-runs energy its end carried
        # (absent in runs written by earlier versions: the roll-up then takes energy_j and 0)
        "share_j": number(metrics.get("sweep_share_energy_j")),
        "gap_before_j": number(metrics.get("sweep_gap_before_energy_j")),
        "shares_devices": tags.get("energy.shares_devices") == "true",
        "duration_s": number(metrics.get("duration_s")),
        "power_mean_w": number(metrics.get("power_mean_w")),
        "energy_low_util_j": number(metrics.get("energy_low_util_j")),
        "low_util_threshold": number(tags.get("energy.low_util_threshold")),
        "start_time_ms": info.start_time,
        "end_time_ms": info.end_time,
        # where it ran: energy per host, and the processes that contributed
        "host": tags.get("energy.host"),
        "session": tags.get("energy.session"),
        "pid": tags.get("energy.pid"),
        "params": dict(data.params),
        "provenance": {key: tags[tag] for tag, key in PROVENANCE_TAGS.items() if tag in tags},
        "group": tags.get("energy.group_uid") or tags.get("energy.group"),
        "warmup": tags.get("energy.warmup") == "true",
    }


def sweep_header(run: Any) -> dict[str, Any]:
    """The sweep (MLflow parent run) as a plain dict: name, status, planned, budget, totals."""
    info, data = run.info, run.data
    metrics, tags = data.metrics, data.tags
    return {
        "run_id": info.run_id,
        "experiment_id": info.experiment_id,
        "name": tags.get("energy.sweep") or info.run_name or info.run_id[:8],
        "status": STATUS.get(info.status, info.status.lower()),
        "start_time_ms": info.start_time,
        "end_time_ms": info.end_time,
        "planned": whole(tags.get("energy.planned")),
        "budget_j": number(tags.get("energy.budget_j", metrics.get("sweep_budget_j"))),
        "budget_state": tags.get("energy.budget_state"),
        # the writer's own roll-up (sum over finished children), for comparison and checks
        "logged_energy_j": number(metrics.get("sweep_energy_j")),
        "logged_runs": whole(metrics.get("sweep_runs")),
        "logged_mean_energy_per_run_j": number(metrics.get("sweep_mean_energy_per_run_j")),
        "logged_runs_energy_j": number(metrics.get("sweep_runs_energy_j")),
        "logged_between_runs_energy_j": number(metrics.get("sweep_between_runs_energy_j")),
        # members' between-runs energy after their last runs (energy.between_after_j.<uid>)
        "between_after_j": math.fsum(v for v in (number(value) for key, value in tags.items()
                                                  if key.startswith("energy.between_after_j.")) if v is not None),
        "overlapping_runs": whole(tags.get("energy.overlapping_runs")),
        "logged_hosts": whole(metrics.get("sweep_hosts")),
        "logged_processes": whole(metrics.get("sweep_processes")),
        "host": tags.get("energy.host"),
    }
