from pathlib import Path

import pytest

from ipython_energy import config as cfg

ROOT = Path(__file__).resolve().parents[1]


def test_settings_and_config_fields_agree():
    assert {s.name for s in cfg.SETTINGS} == set(cfg.Config.__dataclass_fields__)


def test_docs_table_is_current():
    assert cfg.settings_table() in (ROOT / "docs" / "configuration.md").read_text()


def test_environment_values_are_parsed_and_mlflow_fallbacks_apply():
    config, warnings = cfg.from_env({
        "IPYTHON_ENERGY_INTERVAL_S": "0.05", "IPYTHON_ENERGY_LOG": "off",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "MLFLOW_EXPERIMENT_NAME": "exp",
        "IPYTHON_ENERGY_PUE": "1.3"})
    assert warnings == []
    assert (config.interval_s, config.log, config.tracking_uri, config.experiment, config.pue) == \
        (0.05, False, "http://127.0.0.1:5000", "exp", 1.3)


def test_own_variable_beats_mlflow_fallback():
    config, _ = cfg.from_env({"IPYTHON_ENERGY_EXPERIMENT": "mine", "MLFLOW_EXPERIMENT_NAME": "theirs"})
    assert config.experiment == "mine"


@pytest.mark.parametrize("name,value,message", [
    ("interval_s", "fast", "must be a number"),
    ("interval_s", "nan", "finite"),
    ("interval_s", "0", "at least"),
    ("interval_s", "1e9", "at most"),
    ("pue", "0.5", "at least 1"),
    ("log", "maybe", "true or false"),
    ("idle_power_w", "-3", "at least 0"),
])
def test_bad_values_name_the_setting(name, value, message):
    with pytest.raises(cfg.ConfigError, match=f"{name}.*{message}"):
        cfg.from_env({f"IPYTHON_ENERGY_{name.upper()}": value})


def test_typo_in_environment_is_reported_with_suggestion():
    _, warnings = cfg.from_env({"IPYTHON_ENERGY_INTERVL_S": "0.2"})
    assert len(warnings) == 1 and "IPYTHON_ENERGY_INTERVAL_S" in warnings[0]


def test_unknown_setting_in_code_is_an_error():
    with pytest.raises(cfg.ConfigError, match="did you mean 'interval_s'"):
        cfg.Config().with_values(intervals=1)


@pytest.mark.parametrize("text,joules", [
    ("5kJ", 5000.0), ("5 kj", 5000.0), ("2.5MJ", 2.5e6), ("0.5kWh", 1.8e6), ("100", 100.0), ("1e3J", 1000.0),
    (12, 12.0)])
def test_parse_energy(text, joules):
    assert cfg.parse_energy(text) == joules


@pytest.mark.parametrize("text", ["", "kJ", "-5kJ", "0", "nan", "inf", "5 parsecs", "5kJ extra", True])
def test_parse_energy_rejects(text):
    with pytest.raises(ValueError):
        cfg.parse_energy(text)


def test_tracking_uri_is_made_absolute(tmp_path):
    assert cfg.Config().resolved_tracking_uri(str(tmp_path)) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    rel = cfg.Config(tracking_uri="sqlite:///sub/m.db").resolved_tracking_uri(str(tmp_path))
    assert rel == f"sqlite:///{tmp_path / 'sub' / 'm.db'}"
    assert cfg.Config(tracking_uri="http://h:5000").resolved_tracking_uri(str(tmp_path)) == "http://h:5000"
    (tmp_path / "mlruns" / "1").mkdir(parents=True)  # artifacts of the sqlite store: still the sqlite store
    assert cfg.Config().resolved_tracking_uri(str(tmp_path)) == f"sqlite:///{tmp_path / 'mlflow.db'}"
