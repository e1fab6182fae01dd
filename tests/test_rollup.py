"""A sweep's roll-up (ipython_energy.rollup): one rule for totals, mean, forecast, budget and rebound,
used alike by the tracker's summary line, the writer's ``sweep_*`` metrics and the sidebar."""

from __future__ import annotations

import math

import pytest

from ipython_energy import rollup


# -- the rules ---------------------------------------------------------------------------
def test_totals_are_exactly_rounded_whatever_the_order():
    energies = [0.1] * 10 + [1 / 3, 2 / 3, 1e-9]
    forward = rollup.totals(energies, planned=20, budget_j=3.0)
    backward = rollup.totals(list(reversed(energies)), planned=20, budget_j=3.0)
    assert forward == backward
    assert forward.energy_j == math.fsum(energies) and forward.runs == len(energies)
    assert forward.mean_energy_per_run_j == pytest.approx(forward.energy_j / len(energies))
    assert forward.forecast_energy_j == pytest.approx(forward.energy_j / len(energies) * 20)
    assert forward.budget_state == "ok"


def test_forecast_counts_at_least_the_runs_already_ended():
    assert rollup.forecast(90.0, 3, planned=2) == 90.0  # more runs than planned: what was spent
    assert rollup.forecast(90.0, 3, planned=None) is None
    assert rollup.forecast(0.0, 0, planned=5) is None  # no run ended: no mean, no forecast


def test_budget_state_is_over_only_past_the_budget():
    assert rollup.budget_state(100.0, 100.0) == "ok"
    assert rollup.budget_state(100.5, 100.0) == "over"
    assert rollup.budget_state(1e9, None) is None


def test_no_runs_no_mean():
    t = rollup.totals([])
    assert (t.runs, t.energy_j, t.mean_energy_per_run_j, t.forecast_energy_j) == (0, 0.0, None, None)


def row(i, status="finished", energy=None, live=None, **kw):
    return {"run_id": f"{i:032x}", "name": f"r{i}", "status": status, "run_index": i, "energy_j": energy,
            "live_energy_j": live, "params": {"lr": "0.1"}, "provenance": {}, **kw}


def test_sweep_data_orders_by_run_index_and_accumulates():
    rows = [row(3, energy=30.0), row(1, energy=10.0), row(2, status="failed", energy=20.0)]
    d = rollup.build_sweep_data({"name": "s", "planned": 6, "budget_j": 50.0}, rows)
    assert [r["index"] for r in d["runs"]] == [1, 2, 3]
    assert [r["name"] for r in d["runs"]] == ["r1", "r2", "r3"]
    assert [r["cumulative_j"] for r in d["runs"]] == [10.0, 30.0, 60.0]
    t = d["totals"]
    assert t["energy_j"] == 60.0 and t["ended_runs"] == 3 and t["mean_energy_per_run_j"] == 20.0
    assert t["forecast_energy_j"] == 120.0  # mean x planned, as the writer's sweep_forecast_energy_j
    assert t["over_budget"] is True and t["budget_used"] == pytest.approx(1.2)


def test_running_run_counts_with_its_live_energy_but_not_in_the_mean():
    d = rollup.build_sweep_data({"name": "s"}, [row(1, energy=10.0), row(2, status="running", live=4.0)])
    live = d["runs"][1]
    assert live["live"] is True and live["energy_j"] == 4.0 and live["cumulative_j"] == 14.0
    assert d["totals"]["energy_j"] == 14.0
    assert d["totals"]["mean_energy_per_run_j"] == 10.0 and d["totals"]["running_runs"] == 1
    assert d["totals"]["forecast_energy_j"] is None  # no planned runs, no forecast


def test_run_without_any_energy_is_kept_with_none():
    d = rollup.build_sweep_data({"name": "s"}, [row(1, status="running")])
    assert d["runs"][0]["energy_j"] is None and d["totals"]["energy_j"] == 0.0


def test_estimated_provenance_marks_the_sweep():
    d = rollup.build_sweep_data({"name": "s"}, [row(1, energy=1.0, provenance={"estimated": "true"})])
    assert d["totals"]["estimated"] is True


# -- rebound ----------------------------------------------------------------------------
def sweep(rid, t, mean, total, name=None):
    return {"run_id": rid, "name": name or rid, "start_time_ms": t, "mean_energy_per_run_j": mean, "energy_j": total}


def test_rebound_is_lower_mean_with_higher_total_and_reports_both_numbers():
    found = rollup.find_rebounds([sweep("b", 2, 42.0, 2100.0), sweep("a", 1, 100.0, 1000.0)])
    assert len(found) == 1
    r = found[0]
    assert (r["run_id"], r["vs_run_id"]) == ("b", "a")
    assert r["mean_change"] == pytest.approx(-0.58) and r["total_change"] == pytest.approx(1.10)
    assert r["label"] == "\u221258% J/run, +110% total"


@pytest.mark.parametrize("later", [
    sweep("b", 2, 50.0, 900.0),    # cheaper per run and cheaper in total: a real saving
    sweep("b", 2, 150.0, 3000.0),  # dearer per run: no rebound, just dearer
    sweep("b", 2, 100.0, 2000.0),  # same J/run
])
def test_no_rebound_without_both_conditions(later):
    assert rollup.find_rebounds([sweep("a", 1, 100.0, 1000.0), later]) == []


def test_rebound_compares_with_the_latest_earlier_sweep_that_qualifies():
    sweeps = [sweep("a", 1, 100.0, 1000.0), sweep("b", 2, 80.0, 5000.0), sweep("c", 3, 60.0, 3000.0)]
    found = {r["run_id"]: r["vs_run_id"] for r in rollup.find_rebounds(sweeps)}
    assert found == {"b": "a", "c": "a"}  # c is cheaper than b in total, so its rebound is against a


def test_sweeps_without_finished_runs_take_no_part():
    assert rollup.find_rebounds([sweep("a", 1, None, 0.0), sweep("b", 2, 10.0, 500.0)]) == []


def test_format_percent_uses_a_true_minus():
    assert rollup.format_percent(-0.584) == "\u221258%" and rollup.format_percent(1.1) == "+110%"


def test_sweep_data_counts_hosts_and_processes():
    from ipython_energy.rollup import build_sweep_data

    rows = [{"run_id": f"r{i}", "run_index": i, "status": "finished", "energy_j": 1.0, "session": session,
             "provenance": {"host": host}} for i, (host, session) in enumerate([("a", "s1"), ("a", "s2"), ("b", "s3")])]
    totals = build_sweep_data({"name": "s"}, rows)["totals"]
    assert totals["hosts"] == ["a", "b"] and totals["processes"] == 3
