"""Energy at low utilisation and stages, from ``%%energy`` through the real writer into MLflow
(sqlite), read back with the MLflow client and through the sidebar's reader (``query``).

Hardware seam: the replay sensor plays a trace with a ``gpu0_util`` column (gpu0 100 W at 10 %
utilisation, cpu 20 W without utilisation)."""

from __future__ import annotations

import time

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.testing.globalipapp import start_ipython

import ipython_energy
from ipython_energy import layout, query
from tests.helpers.mlflow_readback import runs as logged_runs


@pytest.fixture
def ip_util(energy_home, sqlite_uri, monkeypatch, tmp_path):
    trace = tmp_path / "util.csv"
    trace.write_text("t_s,gpu0_w,gpu0_util,cpu_w\n0,100,10,20\n3600,100,10,20\n")
    monkeypatch.setenv("IPYTHON_ENERGY_SENSORS", f"replay:{trace}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    monkeypatch.chdir(tmp_path)
    start_ipython()
    shell = InteractiveShell.instance()
    ipython_energy.load_ipython_extension(shell)
    yield shell
    ipython_energy.unload_ipython_extension(shell)


def test_low_util_metrics_land_in_mlflow_and_reach_the_sidebar_rows(ip_util, sqlite_uri, capsys):
    time.sleep(0.15)
    result = ip_util.run_cell("%%energy -o m --sweep lowsweep\nimport time\ntime.sleep(0.4)")
    assert result.success
    m = ip_util.user_ns["m"]
    # gpu0 is at 10 % all along (below 30 %): all its energy; cpu reports no utilisation
    assert m.domains_low_util_j["gpu0"] == pytest.approx(m.domains["gpu0"], rel=1e-6)
    assert "cpu" not in m.domains_low_util_j
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("⚡"))
    assert "· 100 % of gpu0 energy at < 30 % utilisation" in line
    assert ipython_energy.flush(120)
    _, runs = logged_runs(sqlite_uri)
    run = next(r for r in runs if r.data.tags["energy.kind"] == "run")
    metrics = run.data.metrics
    assert metrics["energy_low_util_j"] == pytest.approx(m.energy_low_util_j)
    assert metrics["energy_gpu0_low_util_j"] == pytest.approx(m.domains_low_util_j["gpu0"])
    assert metrics["low_util_s"] == pytest.approx(m.low_util_s)
    assert "energy_cpu_low_util_j" not in metrics  # absent, not 0 J
    assert run.data.tags["energy.low_util_threshold"] == "30"
    row = layout.run_row(run)
    assert row["energy_low_util_j"] == pytest.approx(m.energy_low_util_j) and row["low_util_threshold"] == 30.0
    sweep = next(r for r in runs if r.data.tags["energy.kind"] == "sweep")
    data = query.SourceReader(sqlite_uri).sweep_data("ipython-energy", sweep.info.run_id)
    (r,) = data["runs"]
    assert r["energy_low_util_j"] == pytest.approx(m.energy_low_util_j)


def test_the_threshold_comes_from_the_setting(energy_home, sqlite_uri, monkeypatch, tmp_path):
    monkeypatch.setenv("IPYTHON_ENERGY_LOW_UTIL", "5")
    trace = tmp_path / "util.csv"
    trace.write_text("t_s,gpu0_w,gpu0_util\n0,100,10\n3600,100,10\n")
    monkeypatch.setenv("IPYTHON_ENERGY_SENSORS", f"replay:{trace}")
    monkeypatch.setenv("IPYTHON_ENERGY_LOG", "false")
    start_ipython()
    shell = InteractiveShell.instance()
    ipython_energy.load_ipython_extension(shell)
    try:
        time.sleep(0.15)
        assert shell.run_cell("%%energy -o m\nimport time\ntime.sleep(0.2)").success
        m = shell.user_ns["m"]
        assert m.low_util_threshold == 0.05 and m.domains_low_util_j == {"gpu0": 0.0}
    finally:
        ipython_energy.unload_ipython_extension(shell)


def test_a_run_with_stages_prints_them_in_its_summary_line(ip_util, capsys):
    src = ("%%energy -o m --run staged\nimport time, ipython_energy as e\n"
           "with e.stage('data'):\n    time.sleep(0.1)\nwith e.stage('train'):\n    time.sleep(0.2)")
    assert ip_util.run_cell(src).success
    m = ip_util.user_ns["m"]
    assert set(m.stages) == {"data", "train"}
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("⚡"))
    data_j = m.stages["data"][0]
    assert f"data {ipython_energy.measurement.format_energy(data_j)} ({round(100 * data_j / m.energy_j)} %)" in line
    assert " · train " in line
    assert "ipython-energy-stages" in m._repr_html_()
