"""The one chart definition (ipython_energy.charts): valid Vega-Lite v5, the same spec for the
sidebar and for %energy chart, and an HTML artifact in which hostile names stay inert."""

from __future__ import annotations

import html
import json
import re

import altair as alt
import pytest

from ipython_energy import charts, rollup

HOSTILE = '<img src=x onerror="alert(1)">'
BREAKOUT = "</script><script>alert(2)</script><!--"


def sample(n=4, planned=6, budget=900.0, running=True):
    rows = [{"run_id": f"{i:032x}", "name": f"run {i} {HOSTILE}", "status": "finished", "run_index": i,
             "energy_j": 100.0 * i, "duration_s": 2.0, "params": {"note": BREAKOUT, "lr": "0.1"},
             "provenance": {"methods": "cpu=estimated", "estimated": "true", "coverage": "1.000"}}
            for i in range(1, n + 1)]
    if running:
        rows.append({"run_id": "f" * 32, "name": "live", "status": "running", "run_index": n + 1,
                     "live_energy_j": 50.0, "params": {}, "provenance": {}})
    return rollup.build_sweep_data({"name": f"sweep {BREAKOUT}", "planned": planned, "budget_j": budget}, rows)


def test_altair_is_5_and_emits_vega_lite_5():
    assert alt.__version__.startswith("5.")
    spec = charts.sweep_chart(sample()).to_dict()  # validates against the bundled v5 schema
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/v5")


def test_sidebar_spec_is_the_same_chart():
    d = sample()
    fast = charts.sweep_spec(d, width="container", height=220, title=False)
    full = charts.sweep_chart(d, width="container", height=220, title=False).to_dict()
    assert fast == full


def test_chart_data_carries_runs_forecast_and_budget():
    spec = charts.sweep_spec(sample())
    runs = spec["datasets"]["runs"]
    assert [r["status"] for r in runs] == ["finished"] * 4 + ["running"]
    assert [r["cumulative_j"] for r in runs] == [100.0, 300.0, 600.0, 1000.0, 1050.0]
    assert runs[0]["params"] == f"lr=0.1, note={BREAKOUT}"
    assert "methods=cpu=estimated" in runs[0]["provenance"]
    # forecast: mean of ended runs (250 J) x planned (6), from the last run to run 6
    assert spec["datasets"]["forecast"][-1] == {"index": 6, "cumulative_j": 1500.0,
                                               "label": "forecast 1.5 kJ for 6 runs"}
    assert spec["datasets"]["budget"][0]["budget_j"] == 900.0


def test_no_forecast_or_budget_layers_without_them():
    d = sample(planned=None, budget=None)
    d["sweep"]["planned"] = None
    spec = charts.sweep_spec(d)
    assert spec["datasets"]["forecast"] == [] and spec["datasets"]["budget"] == []


def test_status_colours_are_fixed():
    spec = charts.sweep_chart(sample()).to_dict()

    def units(s):  # the bars and their low-utilisation parts are a layer inside the top layer
        for layer in s.get("layer", []):
            yield from units(layer) if "layer" in layer else [layer]

    scales = [l["encoding"]["color"]["scale"] for l in units(spec) if "color" in l.get("encoding", {})]
    assert scales[0] == {"domain": ["running", "finished", "failed", "killed"],
                         "range": list(charts.STATUS_COLORS.values())}


def test_memo_reuses_text_only_for_the_same_objects():
    d = sample()
    memo: dict = {}
    first = charts.chart_rows(d, memo)
    assert charts.chart_rows(d, memo) == first and len(memo) == 5
    d["runs"][0]["params"] = {"lr": "0.5"}  # a changed run arrives as new objects
    assert charts.chart_rows(d, memo)["runs"][0]["params"] == "lr=0.5"


def test_experiment_chart_is_valid_vega_lite_5():
    data = rollup.build_experiment_data({"id": "1", "name": "e"}, [
        {"run_id": "a", "name": HOSTILE, "status": "finished", "start_time_ms": 1, "logged_runs": 10,
         "logged_energy_j": 1000.0, "logged_mean_energy_per_run_j": 100.0},
        {"run_id": "b", "name": "b", "status": "finished", "start_time_ms": 2, "logged_runs": 50,
         "logged_energy_j": 2100.0, "logged_mean_energy_per_run_j": 42.0}])
    spec = charts.experiment_chart(data).to_dict()
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/v5")
    values = charts.experiment_spec(data)["data"]["values"]
    assert [v["rebound"] for v in values] == ["no rebound", "rebound"]


def test_html_artifact_keeps_hostile_names_inert():
    page = charts.sweep_html(sample(), inline=False)
    # nothing from the data can close the script element or open markup
    assert "</script><script>alert" not in page and "<img src=x" not in page and "<!--" not in page
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", page, flags=re.S)
    spec = json.loads(next(s for s in scripts if '"$schema"' in s))
    assert spec["datasets"]["runs"][0]["name"] == f"run 1 {HOSTILE}"  # the spec is intact
    assert html.escape(f"run 1 {HOSTILE}") in page  # the table shows the name as text
    assert html.escape(f"sweep {BREAKOUT}") in page


def test_html_artifact_inline_needs_vl_convert():
    try:
        import vl_convert  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="vl-convert-python"):
            charts.sweep_html(sample(), inline=True)
    else:
        page = charts.sweep_html(sample(), inline=True)
        assert "cdn.jsdelivr.net" not in page


def test_format_energy():
    # The same formatting as the summary line (one function, in measurement.py).
    assert [charts.format_energy(v) for v in (0.5, 999.0, 1234.5, 2.5e6, 3e9, None, float("nan"))] == [
        "500 mJ", "999 J", "1.23 kJ", "2.5 MJ", "3 GJ", "\u2013", "\u2013"]


def test_low_util_part_of_a_bar_and_its_tooltip():
    d = {"sweep": {"name": "s"}, "totals": {}, "runs": [
        {"index": 1, "name": "a", "status": "finished", "energy_j": 400.0, "cumulative_j": 400.0,
         "energy_low_util_j": 160.0, "low_util_threshold": 30.0},
        {"index": 2, "name": "b", "status": "finished", "energy_j": 300.0, "cumulative_j": 700.0},
        {"index": 3, "name": "c", "status": "running", "energy_j": 50.0, "live": True, "cumulative_j": 750.0,
         "energy_low_util_j": 20.0, "low_util_threshold": 30.0}]}
    rows = charts.chart_rows(d)["runs"]
    assert [r["low_util_j"] for r in rows] == [160.0, None, None]  # none without the figure, none while live
    assert rows[0]["low_util_label"] == "160 J (40 %) at < 30 % utilisation"
    spec = charts.sweep_spec(d)
    low = [l for l in spec["layer"][0]["layer"] if l.get("name") == "lowutil"]
    assert low and low[0]["encoding"]["y"]["field"] == "low_util_j"


def test_a_sweep_on_several_hosts_gets_bars_by_host_and_a_panel_per_host():
    """Runs from two hosts: the bars are coloured by host and a panel below gives each host's
    energy, runs and processes; ``per_host=False`` / ``color_by="status"`` keep the plain chart."""
    rows = [{"run_id": f"{i:032x}", "name": f"t{i}", "status": "finished", "run_index": i, "energy_j": 10.0 * i,
             "host": "node-a" if i % 2 else "node-b", "session": f"s{i % 3}", "params": {}, "provenance": {}}
            for i in range(1, 7)]
    data = rollup.build_sweep_data({"name": "wide"}, rows)
    spec = charts.sweep_chart(data).to_dict()
    top, panel = spec["vconcat"]
    assert {layer.get("encoding", {}).get("color", {}).get("field") for layer in top["layer"][0]["layer"]} >= {"host"}
    (values,) = {json.dumps(layer["data"]["values"]) for layer in panel["layer"]}
    by_host = {row["host"]: row for row in json.loads(values)}
    assert by_host["node-b"]["energy_j"] == 20.0 + 40.0 + 60.0 and by_host["node-b"]["runs"] == 3
    assert by_host["node-a"]["energy_j"] == 10.0 + 30.0 + 50.0
    assert by_host["node-a"]["processes"] == 3  # sessions s1, s0, s2
    assert "90 J · 3 run(s) · 3 process(es)" == by_host["node-a"]["label"]
    plain = charts.sweep_chart(data, per_host=False, color_by="status").to_dict()
    assert "vconcat" not in plain
    one_host = rollup.build_sweep_data({"name": "narrow"}, [dict(r, host="node-a") for r in rows])
    assert "vconcat" not in charts.sweep_chart(one_host).to_dict()
