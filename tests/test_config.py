"""Settings: ``%config EnergyMagics.<name>``, else ``IPYTHON_ENERGY_<NAME>``, else the default.

The first tests load the extension in a real IPython shell, as a user configures it; the rest
call ``from_env`` with an environment of their own, as scripts and worker processes do.
The documentation table is checked in tests/test_configuration_doc.py.
"""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

import ipython_energy
from ipython_energy import config as cfg
from ipython_energy.validate import parse_energy


@pytest.fixture
def shell(energy_home, flat_trace, sqlite_uri, monkeypatch, tmp_path):
    """A real IPython shell without the extension loaded; the test configures it, then loads it."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.testing.globalipapp import start_ipython

    monkeypatch.setenv("IPYTHON_ENERGY_SENSORS", f"replay:{flat_trace}")
    monkeypatch.setenv("IPYTHON_ENERGY_LOG", "off")
    monkeypatch.chdir(tmp_path)
    start_ipython()
    ip = InteractiveShell.instance()
    ip.extension_manager.loaded.discard("ipython_energy")
    saved = ip.config.pop("EnergyMagics", None)
    yield ip
    if "ipython_energy" in ip.extension_manager.loaded:
        ip.run_line_magic("unload_ext", "ipython_energy")
    ip.config.pop("EnergyMagics", None)
    if saved is not None:
        ip.config.EnergyMagics = saved


def test_config_magic_beats_environment_beats_default(shell, monkeypatch):
    monkeypatch.setenv("IPYTHON_ENERGY_EXPERIMENT", "from-env")
    monkeypatch.setenv("IPYTHON_ENERGY_INTERVAL_S", "0.05")
    monkeypatch.setenv("IPYTHON_ENERGY_NVML_IDLE_INTERVAL_S", "5")
    shell.run_line_magic("config", "EnergyMagics.experiment = 'from-config'")
    shell.run_line_magic("load_ext", "ipython_energy")
    settings = ipython_energy.tracker().config
    assert settings.experiment == "from-config"
    assert settings.interval_s == 0.05
    assert settings.live_interval_s == 2.0
    assert ipython_energy.tracker().meter.interval_s == 0.05
    assert ipython_energy.tracker().meter.sampler.idle_interval_s == 5.0


def test_settings_are_read_once_when_the_extension_loads(shell, monkeypatch):
    shell.run_line_magic("load_ext", "ipython_energy")
    monkeypatch.setenv("IPYTHON_ENERGY_QUIET", "on")
    shell.run_line_magic("config", "EnergyMagics.experiment = 'later'")
    settings = ipython_energy.tracker().config
    assert (settings.quiet, settings.experiment) == (False, "ipython-energy")


def test_config_magic_lists_every_setting_with_its_help(shell, capsys):
    shell.run_line_magic("load_ext", "ipython_energy")
    capsys.readouterr()
    shell.run_line_magic("config", "EnergyMagics")
    out = capsys.readouterr().out
    for name in cfg.SETTING_NAMES:
        assert f"EnergyMagics.{name}=" in out
    assert "Sampler period in seconds" in out


def test_a_bad_value_stops_loading_with_the_settings_name(shell):
    shell.run_line_magic("config", "EnergyMagics.log = 'maybe'")
    with pytest.raises(UsageError, match="ipython-energy configuration: log must be true or false, not 'maybe'"):
        shell.run_line_magic("load_ext", "ipython_energy")


def test_environment_values_are_parsed_and_mlflow_fallbacks_apply():
    config, warnings = cfg.from_env({
        "IPYTHON_ENERGY_INTERVAL_S": "0.05", "IPYTHON_ENERGY_LOG": "off",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "MLFLOW_EXPERIMENT_NAME": "exp",
        "IPYTHON_ENERGY_PUE": "1.3", "IPYTHON_ENERGY_HOME": "/tmp/somewhere"})
    assert warnings == []
    assert (config.interval_s, config.log, config.tracking_uri, config.experiment, config.pue) == \
        (0.05, False, "http://127.0.0.1:5000", "exp", 1.3)


def test_without_variables_every_setting_has_its_default():
    config, _ = cfg.from_env({})
    assert config.values() == {
        "sensors": "auto", "interval_s": 0.1, "nvml_idle_interval_s": 2.0, "idle_power_w": None, "pue": None, "carbon_g_per_kwh": None,
        "tracking_uri": None, "experiment": "ipython-energy", "log": True, "live_interval_s": 2.0,
        "autolog": False, "quiet": False, "cpu_idle_w_per_core": None, "cpu_active_w_per_core": None,
        "cpu_tdp_w": None, "sweep": None, "mlflow_timeout_s": 120.0, "mlflow_slow_s": 1.0, "low_util": 30.0,
        "cooldown_margin_c": 3.0, "cooldown_max_s": 120.0}


def test_the_sweep_setting_is_a_name_checked_like_any_sweep_name():
    assert cfg.from_env({"IPYTHON_ENERGY_SWEEP": " grid "})[0].sweep == "grid"
    assert cfg.from_env({"IPYTHON_ENERGY_SWEEP": " "})[0].sweep is None
    with pytest.raises(cfg.ConfigError, match="sweep: sweep name must not contain control characters"):
        cfg.from_env({"IPYTHON_ENERGY_SWEEP": "a\x07b"})


def test_own_variable_beats_mlflow_fallback():
    config, _ = cfg.from_env({"IPYTHON_ENERGY_EXPERIMENT": "mine", "MLFLOW_EXPERIMENT_NAME": "theirs"})
    assert config.experiment == "mine"


@pytest.mark.parametrize("value,expected", [
    ("on", True), ("YES", True), ("1", True), (" true ", True), ("off", False), ("No", False), ("0", False)])
def test_switches_take_the_usual_words(value, expected):
    assert cfg.from_env({"IPYTHON_ENERGY_QUIET": value})[0].quiet is expected


def test_an_empty_variable_is_unset():
    """Templated environments leave variables empty (``IPYTHON_ENERGY_SENSORS=``): that means unset,
    as for most tools, not a bad value (on 40d1a1c: 'sensors must not be empty', and no load)."""
    empty = {f"IPYTHON_ENERGY_{name.upper()}": blank
             for name, blank in zip(cfg.EnergySettings.class_trait_names(config=True), ["", " ", "\t"] * 10)}
    config, warnings = cfg.from_env({**empty, "MLFLOW_EXPERIMENT_NAME": "theirs"})
    assert warnings == []
    assert config.values() == cfg.from_env({"MLFLOW_EXPERIMENT_NAME": "theirs"})[0].values()
    assert config.sensors == "auto" and config.pue is None and config.experiment == "theirs"


@pytest.mark.parametrize("name,value,message", [
    ("interval_s", "fast", "must be a number, not 'fast'"),
    ("interval_s", "nan", "must be a finite number"),
    ("interval_s", "0", "must be at least 0.005, not 0"),
    ("interval_s", "1e9", "must be at most 60, not 1e"),
    ("pue", "0.5", "must be at least 1"),
    ("log", "maybe", "must be true or false"),
    ("idle_power_w", "-3", "must be at least 0"),
    ("live_interval_s", "0.01", "must be at least 0.5"),
])
def test_bad_values_name_the_setting(name, value, message):
    with pytest.raises(cfg.ConfigError, match=f"^{name} {message}"):
        cfg.from_env({f"IPYTHON_ENERGY_{name.upper()}": value})


@pytest.mark.parametrize("values,message", [
    ({"interval_s": True}, "interval_s must be a number, not True"),
    ({"interval_s": float("inf")}, "interval_s must be a finite number"),
    ({"interval_s": None}, "interval_s needs a value"),
    ({"log": None}, "log needs a value"),
    ({"cpu_tdp_w": -1}, "cpu_tdp_w must be at least 0"),
])
def test_values_given_in_code_are_checked_the_same_way(values, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.from_env({})[0].with_values(**values)


def test_typo_in_environment_is_reported_with_suggestion():
    _, warnings = cfg.from_env({"IPYTHON_ENERGY_INTERVL_S": "0.2"})
    assert len(warnings) == 1 and "IPYTHON_ENERGY_INTERVAL_S" in warnings[0]


def test_unknown_setting_in_code_is_an_error():
    with pytest.raises(cfg.ConfigError, match="did you mean 'interval_s'"):
        cfg.from_env({})[0].with_values(intervals=1)


def test_with_values_makes_a_copy():
    config, _ = cfg.from_env({"IPYTHON_ENERGY_PUE": "1.2"})
    copy = config.with_values(experiment="other")
    assert (copy.experiment, copy.pue, config.experiment) == ("other", 1.2, "ipython-energy")


@pytest.mark.parametrize("text,joules", [
    ("5kJ", 5000.0), ("5 kj", 5000.0), ("2.5MJ", 2.5e6), ("0.5kWh", 1.8e6), ("100", 100.0), ("1e3J", 1000.0),
    (12, 12.0)])
def test_parse_energy(text, joules):  # the --budget of %energy sweep
    assert parse_energy(text) == joules


@pytest.mark.parametrize("text", ["", "kJ", "-5kJ", "0", "nan", "inf", "5 parsecs", "5kJ extra", True])
def test_parse_energy_rejects(text):
    with pytest.raises(ValueError):
        parse_energy(text)


def test_tracking_uri_is_made_absolute(tmp_path):
    def resolved(**env):
        config, _ = cfg.from_env(env)
        return config.resolved_tracking_uri(str(tmp_path))

    assert resolved() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolved(IPYTHON_ENERGY_TRACKING_URI="sqlite:///sub/m.db") == f"sqlite:///{tmp_path / 'sub' / 'm.db'}"
    assert resolved(IPYTHON_ENERGY_TRACKING_URI="http://h:5000") == "http://h:5000"
    (tmp_path / "mlruns" / "1").mkdir(parents=True)  # artifacts of the sqlite store: still the sqlite store
    assert resolved() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_low_util_is_a_percentage_from_its_variable():
    config, warnings = cfg.from_env({"IPYTHON_ENERGY_LOW_UTIL": "12.5"})
    assert warnings == [] and config.low_util == 12.5
    with pytest.raises(cfg.ConfigError, match="low_util must be at most 100"):
        cfg.from_env({"IPYTHON_ENERGY_LOW_UTIL": "150"})
