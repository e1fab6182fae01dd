"""Configuration: traitlets settings with range checks, defaulting to ``IPYTHON_ENERGY_*`` variables.

Every setting is a trait of :class:`EnergySettings` (and so of ``EnergyMagics``, which inherits
them): ``c.EnergyMagics.<name>`` in IPython configuration, else the environment variable
``IPYTHON_ENERGY_<NAME>`` (read by the trait's ``@default`` method), else the default written on
the trait.  A value that cannot be used raises :class:`ConfigError` naming the setting.
docs/configuration.md lists the traits; tests/test_configuration_doc.py keeps it current.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Mapping

from traitlets import Bool, Float, TraitError, Unicode, default
from traitlets.config import Configurable

ENV_PREFIX = "IPYTHON_ENERGY_"

#: Variables with our prefix that are not settings: the private folder (paths.py) and the powercap
#: root the RAPL sensor reads (sensors/__init__.py, docs/sensors.md).
OTHER_VARIABLES = frozenset({ENV_PREFIX + "HOME", ENV_PREFIX + "RAPL_ROOT"})


class ConfigError(TraitError, ValueError):
    """A setting has a value we cannot use; the message names the setting and the fix."""


# ---- the kinds of setting: each takes a Python value or the text of an environment variable ------------

class Number(Float):
    """A finite number within ``[min, max]``, or None (unset) where the default is None."""

    def validate(self, obj, value: Any) -> float | None:
        name = self.name
        if value is None or (isinstance(value, str) and not value.strip() and self.default_value is None):
            if self.default_value is not None:
                raise ConfigError(f"{name} needs a value")
            return None
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, not {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, not {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number, not {value!r}")
        if self.min is not None and number < self.min:
            raise ConfigError(f"{name} must be at least {self.min:g}, not {number:g}")
        if self.max is not None and number > self.max:
            raise ConfigError(f"{name} must be at most {self.max:g}, not {number:g}")
        return number


class Switch(Bool):
    """On or off: a bool, or 1/true/yes/on and 0/false/no/off in any case."""

    def validate(self, obj, value: Any) -> bool:
        if value is None:
            raise ConfigError(f"{self.name} needs a value")
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{self.name} must be true or false, not {value!r}")


class Text(Unicode):
    """Stripped text; empty means unset where the default is None, and is an error elsewhere."""

    def validate(self, obj, value: Any) -> str | None:
        if value is None:
            return None
        text = str(value).strip()
        if not text:
            if self.default_value is None:
                return None
            raise ConfigError(f"{self.name} must not be empty")
        return text


class Name(Text):
    """A name as a sweep or run takes it (:func:`~ipython_energy.validate.check_name`), or None (unset)."""

    def validate(self, obj, value: Any) -> str | None:
        from .validate import check_name

        text = super().validate(obj, value)
        try:
            return None if text is None else check_name(text, self.name)
        except ValueError as exc:
            raise ConfigError(f"{self.name}: {exc}") from None


def _unset_or_number(low: float, high: float, help: str) -> Number:
    """A setting that is either unset (None: the tracker decides) or a number in [low, high]."""
    return Number(None, allow_none=True, min=low, max=high, help=help).tag(config=True)


class EnergySettings(Configurable):
    """What the tracker is built from.  Read once, when the extension loads."""

    sensors = Text(
        "auto",
        help="Which sensors to use: `auto` (NVML GPUs + RAPL, CPU estimate when no RAPL), a comma list "
             "such as `nvml,rapl,cpu-model` (each must work, or loading says why), or `replay:PATH` "
             "to play a recorded CSV trace instead of hardware.").tag(config=True)
    interval_s = Number(0.1, min=0.005, max=60.0, help="Sampler period in seconds (10 Hz).").tag(config=True)
    nvml_idle_interval_s = Number(
        2.0, min=0.005, max=3600.0,
        help="How often a GPU's NVML energy counter is read while no window (a measured cell, run or stage) "
             "is open, in seconds; every `interval_s` while one is. Windows, sweeps and the session stay exact (the "
             "counter is read at every edge); a value not above `interval_s` reads it at every sample "
             "(see docs/sensors.md).").tag(config=True)
    idle_power_w = _unset_or_number(
        0.0, 1e6, "Idle baseline power in watts for gross/idle/net energy. Unset: measured in the first "
                  "seconds after loading, while no cell runs.")
    pue = _unset_or_number(
        1.0, 10.0, "Power usage effectiveness of the facility (e.g. 1.2); adds `energy_facility_j`.")
    carbon_g_per_kwh = _unset_or_number(
        0.0, 5000.0, "Grid carbon intensity in gCO2e/kWh; adds `co2e_g`. Taken only from here, never looked "
                     "up online.")
    tracking_uri = Text(
        None, allow_none=True,
        help="MLflow tracking URI. Unset: `MLFLOW_TRACKING_URI`, else MLflow's default store in the "
             "working directory at load time (`mlflow.db`), made absolute.").tag(config=True)
    experiment = Text("ipython-energy", help="MLflow experiment name.").tag(config=True)
    log = Switch(True, help="Log to MLflow at all. Off: measure and print only.").tag(config=True)
    live_interval_s = Number(
        2.0, min=0.5, max=3600.0,
        help="How often an open run writes its `live_energy_j` / `live_power_w` series.").tag(config=True)
    autolog = Switch(False, help="Measure every cell from the start (same as `%energy autolog on`).").tag(
        config=True)
    quiet = Switch(False, help="Print no summary line after measured cells.").tag(config=True)
    cpu_idle_w_per_core = _unset_or_number(
        0.0, 1000.0, "CPU estimate: idle watts per core (see docs/sensors.md for the default).")
    cpu_active_w_per_core = _unset_or_number(
        0.0, 1000.0, "CPU estimate: active watts per core (see docs/sensors.md for the default).")
    cpu_tdp_w = _unset_or_number(
        0.0, 10000.0, "CPU estimate: package TDP in watts; when set, the model scales TDP by this process's "
                      "CPU share.")
    low_util = Number(
        30.0, min=0.0, max=100.0,
        help="Utilisation in per cent below which a domain's energy counts as spent at low utilisation "
             "(`energy_low_util_j`), for sensors that report utilisation (see docs/sensors.md).").tag(config=True)

    sweep = Name(
        None, allow_none=True,
        help="Sweep that runs started outside any other sweep join: a name in the experiment (created if "
             "missing) or the MLflow run id of a sweep's parent run. Lets a launcher put every worker "
             "process in one sweep; each leaves it when it exits.").tag(config=True)

    mlflow_timeout_s = Number(
        120.0, min=1.0, max=3600.0,
        help="Longest wait in seconds for one answer of a tracking server before it counts as not answering. "
             "Each request's wait starts at ten times the server's recent answer time (at least 2 s) and "
             "doubles after each one left unanswered, up to this; meanwhile MLflow counts as slow.").tag(config=True)
    mlflow_slow_s = Number(
        1.0, min=0.01, max=3600.0,
        help="MLflow counts as slow (in `%energy` and in one warning) while its recent answers take longer than "
             "this many seconds (the median of the last five), or a write has waited five times as long; it is "
             "still written to.").tag(config=True)
    cooldown_margin_c = Number(
        3.0, min=0.0, max=100.0,
        help="`cooldown auto` (repeats, A/B): wait until every GPU is within this many °C of the session's idle "
             "temperature (the lowest it has read since loading).").tag(config=True)
    cooldown_max_s = Number(
        120.0, min=0.0, max=86400.0,
        help="`cooldown auto`: the longest wait in seconds before a repeat; the run then starts and its "
             "`energy.cooldown` tag says the wait timed out.").tag(config=True)

    def __init__(self, environ: Mapping[str, str] | None = None, **kwargs: Any):
        """``environ``: where the ``@default`` methods look (``os.environ`` when None).

        Every setting is read here, so a bad value raises :class:`ConfigError` now, and a later
        change to the environment changes nothing.
        """
        self.environ = os.environ if environ is None else environ
        super().__init__(**kwargs)
        self.values()

    # ---- defaults: the environment, else the value written on the trait ---------------------------
    def _from_env(self, name: str, fallback: str | None = None) -> Any:
        """The variable's value; an empty (or blank) variable is unset, as templated environments
        often leave one (``IPYTHON_ENERGY_SENSORS=``), and so is an empty fallback."""
        for key in (ENV_PREFIX + name.upper(), fallback):
            value = self.environ.get(key) if key else None
            if value is not None and value.strip():
                return value
        return getattr(type(self), name).default_value

    @default("sensors")
    def _sensors_default(self):
        return self._from_env("sensors")

    @default("interval_s")
    def _interval_s_default(self):
        return self._from_env("interval_s")

    @default("nvml_idle_interval_s")
    def _nvml_idle_interval_s_default(self):
        return self._from_env("nvml_idle_interval_s")

    @default("idle_power_w")
    def _idle_power_w_default(self):
        return self._from_env("idle_power_w")

    @default("pue")
    def _pue_default(self):
        return self._from_env("pue")

    @default("carbon_g_per_kwh")
    def _carbon_g_per_kwh_default(self):
        return self._from_env("carbon_g_per_kwh")

    @default("tracking_uri")
    def _tracking_uri_default(self):
        return self._from_env("tracking_uri", fallback="MLFLOW_TRACKING_URI")

    @default("experiment")
    def _experiment_default(self):
        return self._from_env("experiment", fallback="MLFLOW_EXPERIMENT_NAME")

    @default("log")
    def _log_default(self):
        return self._from_env("log")

    @default("live_interval_s")
    def _live_interval_s_default(self):
        return self._from_env("live_interval_s")

    @default("autolog")
    def _autolog_default(self):
        return self._from_env("autolog")

    @default("quiet")
    def _quiet_default(self):
        return self._from_env("quiet")

    @default("cpu_idle_w_per_core")
    def _cpu_idle_w_per_core_default(self):
        return self._from_env("cpu_idle_w_per_core")

    @default("cpu_active_w_per_core")
    def _cpu_active_w_per_core_default(self):
        return self._from_env("cpu_active_w_per_core")

    @default("cpu_tdp_w")
    def _cpu_tdp_w_default(self):
        return self._from_env("cpu_tdp_w")

    @default("sweep")
    def _sweep_default(self):
        return self._from_env("sweep")

    @default("mlflow_timeout_s")
    def _mlflow_timeout_s_default(self):
        return self._from_env("mlflow_timeout_s")

    @default("mlflow_slow_s")
    def _mlflow_slow_s_default(self):
        return self._from_env("mlflow_slow_s")

    @default("low_util")
    def _low_util_default(self):
        return self._from_env("low_util")

    @default("cooldown_margin_c")
    def _cooldown_margin_c_default(self):
        return self._from_env("cooldown_margin_c")

    @default("cooldown_max_s")
    def _cooldown_max_s_default(self):
        return self._from_env("cooldown_max_s")

    # ---- reading --------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        """Every setting by name, as used."""
        out = {}
        for name in SETTING_NAMES:
            try:
                out[name] = getattr(self, name)
            except TraitError as exc:  # traitlets wraps what a default raises; ours names the fix
                raise (exc.__cause__ if isinstance(exc.__cause__, ConfigError) else exc) from None
        return out

    def with_values(self, **values: Any) -> EnergySettings:
        """A copy with ``values`` checked; an unknown name raises ConfigError with a suggestion."""
        for name in values:
            if name not in SETTING_NAMES:
                raise ConfigError(f"unknown setting {name!r}{suggest(name, SETTING_NAMES)}")
        return EnergySettings(environ={}, **{**self.values(), **values})

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


#: The settings' names (the traits EnergySettings itself declares).
SETTING_NAMES: tuple[str, ...] = tuple(EnergySettings.class_own_traits(config=True))

#: The name the tracker knows its settings by.
Config = EnergySettings


def from_env(environ: Mapping[str, str] | None = None) -> tuple[EnergySettings, list[str]]:
    """Settings from ``IPYTHON_ENERGY_*`` (and MLflow's own variables as fallbacks), else defaults.

    Returns the settings and a warning for each variable that looks like ours but is not known
    (a typo), so a misspelt setting is reported instead of silently ignored.
    """
    env = os.environ if environ is None else environ
    return EnergySettings(environ=env), unknown_variables(env)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``IPYTHON_ENERGY_*`` variable that is not a setting, with the closest name."""
    known = {ENV_PREFIX + name.upper() for name in SETTING_NAMES} | OTHER_VARIABLES
    return [f"unknown environment variable {key}{suggest(key, known)}; it is ignored"
            for key in environ if key.startswith(ENV_PREFIX) and key not in known]


def suggest(name: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
