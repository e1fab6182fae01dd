"""Configuration: one table of settings, read from environment variables and traitlets.

Every setting has an environment variable ``IPYTHON_ENERGY_<NAME>`` and a trait
``c.EnergyMagics.<name>`` (IPython config files).  Precedence, highest first:
``%config EnergyMagics.<name> = …`` / config files, then the environment, then the
default.  docs/configuration.md is generated from :data:`SETTINGS`.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

ENV_PREFIX = "IPYTHON_ENERGY_"


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the setting and the fix."""


@dataclass(frozen=True)
class Setting:
    name: str
    type: str  # "str", "float", "bool", "int"
    default: Any
    help: str
    env_fallbacks: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("sensors", "str", "auto",
            "Which sensors to use: `auto` (NVML GPUs + RAPL, CPU estimate when no RAPL), a comma list "
            "such as `nvml,rapl,cpu-model` (each must work, or loading says why), or `replay:PATH` "
            "to play a recorded CSV trace instead of hardware."),
    Setting("interval_s", "float", 0.1, "Sampler period in seconds (10 Hz).", minimum=0.005, maximum=60.0),
    Setting("idle_power_w", "float", None,
            "Idle baseline power in watts for gross/idle/net energy. Unset: measured in the first "
            "seconds after loading, while no cell runs.", minimum=0.0, maximum=1e6),
    Setting("pue", "float", None, "Power usage effectiveness of the facility (e.g. 1.2); adds `energy_facility_j`.",
            minimum=1.0, maximum=10.0),
    Setting("carbon_g_per_kwh", "float", None,
            "Grid carbon intensity in gCO2e/kWh; adds `co2e_g`. Taken only from here, never looked up online.",
            minimum=0.0, maximum=5000.0),
    Setting("tracking_uri", "str", None,
            "MLflow tracking URI. Unset: `MLFLOW_TRACKING_URI`, else MLflow's default store in the "
            "working directory at load time (`mlflow.db`), made absolute.", env_fallbacks=("MLFLOW_TRACKING_URI",)),
    Setting("experiment", "str", "ipython-energy", "MLflow experiment name.",
            env_fallbacks=("MLFLOW_EXPERIMENT_NAME",)),
    Setting("log", "bool", True, "Log to MLflow at all. Off: measure and print only."),
    Setting("live_interval_s", "float", 2.0,
            "How often an open run writes its `live_energy_j` / `live_power_w` series.", minimum=0.5, maximum=3600.0),
    Setting("autolog", "bool", False, "Measure every cell from the start (same as `%energy autolog on`)."),
    Setting("quiet", "bool", False, "Print no summary line after measured cells."),
    Setting("cpu_idle_w_per_core", "float", None,
            "CPU estimate: idle watts per core (see docs/sensors.md for the default).", minimum=0.0, maximum=1000.0),
    Setting("cpu_active_w_per_core", "float", None,
            "CPU estimate: active watts per core (see docs/sensors.md for the default).", minimum=0.0, maximum=1000.0),
    Setting("cpu_tdp_w", "float", None,
            "CPU estimate: package TDP in watts; when set, the model scales TDP by this process's CPU share.",
            minimum=0.0, maximum=10000.0),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    sensors: str = "auto"
    interval_s: float = 0.1
    idle_power_w: float | None = None
    pue: float | None = None
    carbon_g_per_kwh: float | None = None
    tracking_uri: str | None = None
    experiment: str = "ipython-energy"
    log: bool = True
    live_interval_s: float = 2.0
    autolog: bool = False
    quiet: bool = False
    cpu_idle_w_per_core: float | None = None
    cpu_active_w_per_core: float | None = None
    cpu_tdp_w: float | None = None

    def with_values(self, **values: Any) -> "Config":
        """A copy with ``values`` parsed and checked; unknown names raise ConfigError with a suggestion."""
        parsed = {name: parse_value(name, value) for name, value in values.items()}
        return replace(self, **parsed)

    def resolved_tracking_uri(self, cwd: str | None = None) -> str:
        """The tracking URI made absolute, so a later ``%cd`` does not move the store."""
        uri = self.tracking_uri
        cwd = cwd or os.getcwd()
        if not uri:  # MLflow's default store; ./mlruns next to it holds the artifacts
            return "sqlite:///" + str((Path(cwd) / "mlflow.db").resolve())
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            rel = uri[len("sqlite:///"):]
            if rel and not rel.startswith(":memory:"):
                return "sqlite:///" + str((Path(cwd) / rel).resolve())
        if "://" not in uri:  # a plain path means a file store
            return Path(cwd, uri).resolve().as_uri()
        return uri


def parse_value(name: str, value: Any) -> Any:
    """Parse and check one setting's value (strings from the environment, or Python values)."""
    setting = _BY_NAME.get(name)
    if setting is None:
        raise ConfigError(f"unknown setting {name!r}{suggest(name, _BY_NAME)}")
    if value is None or (isinstance(value, str) and value.strip() == "" and setting.default is None):
        if setting.default is not None and setting.type != "str":
            raise ConfigError(f"{name} needs a value")
        return None
    if setting.type == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, not {value!r}")
    if setting.type == "float":
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, not {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, not {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number, not {value!r}")
        if setting.minimum is not None and number < setting.minimum:
            raise ConfigError(f"{name} must be at least {setting.minimum:g}, not {number:g}")
        if setting.maximum is not None and number > setting.maximum:
            raise ConfigError(f"{name} must be at most {setting.maximum:g}, not {number:g}")
        return number
    text = str(value).strip()
    if not text:
        raise ConfigError(f"{name} must not be empty")
    return text


def from_env(environ: dict[str, str] | None = None, base: Config | None = None) -> tuple[Config, list[str]]:
    """Settings from ``IPYTHON_ENERGY_*`` (and MLflow's own variables as fallbacks).

    Returns the config and a list of warnings for variables that look like ours but are
    not known (typos), so a misspelt setting is reported instead of silently ignored.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        key = ENV_PREFIX + setting.name.upper()
        if key in env:
            values[setting.name] = env[key]
            continue
        for fallback in setting.env_fallbacks:
            if env.get(fallback):
                values[setting.name] = env[fallback]
                break
    known = {ENV_PREFIX + s.name.upper() for s in SETTINGS} | {ENV_PREFIX + "HOME"}
    warnings = [
        f"unknown environment variable {key}{suggest(key, known)}; it is ignored"
        for key in env
        if key.startswith(ENV_PREFIX) and key not in known
    ]
    config = (base or Config()).with_values(**values)
    return config, warnings


def suggest(name: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_ENERGY_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_ENERGY_UNITS: dict[str, float] = {
    "": 1.0, "j": 1.0, "kj": 1e3, "mj": 1e6, "gj": 1e9,
    "wh": 3600.0, "kwh": 3.6e6, "mwh": 3.6e9,
}


def parse_energy(text: str | float | int) -> float:
    """``"5kJ"`` → 5000.0; accepts J, kJ, MJ, GJ, Wh, kWh, MWh (case-insensitive) or a bare number of joules.

    Raises ValueError for anything else, for negative, zero, NaN or infinite amounts.
    """
    if isinstance(text, bool):
        raise ValueError(f"not an energy: {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _ENERGY_RE.match(str(text))
        if not m:
            raise ValueError(f"not an energy: {text!r} (try 5kJ, 2.5MJ, 0.3kWh or a number of joules)")
        unit = m.group(2).lower()
        if unit not in _ENERGY_UNITS:
            raise ValueError(f"unknown energy unit {m.group(2)!r} in {text!r} (use J, kJ, MJ, Wh or kWh)")
        value = float(m.group(1)) * _ENERGY_UNITS[unit]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"an energy budget must be a positive, finite amount, not {text!r}")
    return value


def settings_table() -> str:
    """The Markdown table in docs/configuration.md."""
    rows = ["| setting | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        env = ENV_PREFIX + s.name.upper()
        if s.env_fallbacks:
            env += " (else " + ", ".join(s.env_fallbacks) + ")"
        default = "unset" if s.default is None else f"`{s.default}`"
        rows.append(f"| `{s.name}` | `{env}` | {default} | {s.help} |")
    return "\n".join(rows)

