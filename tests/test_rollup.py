"""A sweep's roll-up (ipython_energy.rollup): one rule for totals, mean, forecast, budget and rebound,
used alike by the tracker's summary line, the writer's ``sweep_*`` metrics and the sidebar."""

from __future__ import annotations

import math
import random

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


# -- rebound with uncertainty (repeats) ---------------------------------------------------
def noisy_sweep(rid, t, rng, *, configs, repeats, mean_j, sd_j, warmups=1, config_spread=0.0):
    """A sweep's summary and its run rows: each configuration a group of ``repeats`` measured runs
    (plus ``warmups``) whose energies are drawn from a known normal distribution, and the group's
    parent run among the sweep's children (it is no run)."""
    rows = []
    for c in range(configs):
        centre = mean_j * (1 + config_spread * (c - (configs - 1) / 2) / max(configs, 1))
        group = f"{rid}-g{c}"
        rows.append({"run_id": f"{group}-parent", "kind": "group", "status": "finished", "energy_j": None})
        for k in range(warmups + repeats):
            rows.append({"run_id": f"{group}-{k}", "kind": "run", "status": "finished", "group": group,
                         "warmup": k < warmups, "energy_j": rng.gauss(centre, sd_j)})
    ran = [r["energy_j"] for r in rows if r["kind"] == "run"]
    summary = sweep(rid, t, math.fsum(ran) / len(ran), math.fsum(ran))
    return summary, rows


def spreads_of(*sweeps_and_rows):
    from ipython_energy.rebound import sweep_spread

    spreads = {s["run_id"]: sweep_spread(rows) for s, rows in sweeps_and_rows}
    return lambda run_id: spreads.get(run_id)


def test_sweep_spread_counts_warmups_in_the_total_but_not_in_j_per_run():
    from ipython_energy.rebound import sweep_spread

    rows = [{"run_id": "p", "kind": "group", "status": "finished", "energy_j": 999.0},
            {"run_id": "w", "kind": "run", "status": "finished", "group": "g", "warmup": True, "energy_j": 130.0},
            *({"run_id": f"r{i}", "kind": "run", "status": "finished", "group": "g", "energy_j": e}
              for i, e in enumerate([100.0, 104.0, 96.0])),
            *({"run_id": f"h{i}", "kind": "run", "status": "finished", "group": "h", "energy_j": e}
              for i, e in enumerate([50.0, 52.0])),
            {"run_id": "lone", "kind": "run", "status": "finished", "energy_j": 70.0},
            {"run_id": "open", "kind": "run", "status": "running", "energy_j": None}]
    s = sweep_spread(rows)
    assert s.measured_j == (100.0, 104.0, 96.0, 50.0, 52.0, 70.0) and s.repeated_groups == 2
    var_g, var_h = 16.0, 2.0  # sample variances of the two groups
    pooled = (2 * var_g + 1 * var_h) / 3  # the one ungrouped run takes the pooled within-group variance
    assert s.total_var_j2 == pytest.approx(4 * var_g + 2 * var_h + pooled)  # the warm-up is one of g's runs
    assert 1.0 < s.total_df <= 3.0  # at most the pooled degrees of freedom


def test_no_repeats_no_spread():
    from ipython_energy.rebound import sweep_spread

    s = sweep_spread([{"run_id": f"r{i}", "kind": "run", "status": "finished", "group": f"g{i}", "energy_j": 10.0 + i}
                      for i in range(5)])
    assert not s.has_repeats and s.total_var_j2 is None and len(s.measured_j) == 5


def test_rebound_with_repeats_fires_when_both_changes_are_outside_their_intervals():
    rng = random.Random(7)
    a = noisy_sweep("a", 1, rng, configs=4, repeats=4, mean_j=100.0, sd_j=5.0)
    b = noisy_sweep("b", 2, rng, configs=10, repeats=3, mean_j=60.0, sd_j=3.0)  # −40 % J/run, +20 % total
    found, within = rollup.check_rebounds([a[0], b[0]], spreads_of(a, b))
    assert within == [] and len(found) == 1
    r = found[0]
    noise = r["interval"]
    lo, hi = noise["mean_change_ci"]
    assert lo < noise["mean_change"] < hi < 0 and lo < -0.4 < hi  # covers the true −40 %
    lo, hi = noise["total_change_ci"]
    assert 0 < lo < noise["total_change"] < hi and lo < 0.2 < hi  # covers the true +20 %
    assert noise["outside"] is True and noise["level"] == 0.95
    assert r["label"] == (f"{rollup.format_percent(noise['mean_change'])} J/run (95% CI "
                          f"{rollup.format_interval(*noise['mean_change_ci'])}), "
                          f"{rollup.format_percent(noise['total_change'])} total (95% CI "
                          f"{rollup.format_interval(*noise['total_change_ci'])})")
    assert "\u2026" in r["label"] and r["note"] == "both changes outside their 95% intervals"


def test_rebound_within_noise_is_not_claimed_but_reported_with_its_interval():
    """J/run truly falls 3 %, the warm-ups make the total rise: the rise is outside its interval,
    the fall is not, so no rebound is claimed (seed 4 shows the apparent rebound)."""
    rng = random.Random(4)
    a = noisy_sweep("a", 1, rng, configs=3, repeats=3, mean_j=100.0, sd_j=20.0, warmups=0)
    b = noisy_sweep("b", 2, rng, configs=3, repeats=3, mean_j=97.0, sd_j=20.0, warmups=1)
    assert b[0]["mean_energy_per_run_j"] < a[0]["mean_energy_per_run_j"] and b[0]["energy_j"] > a[0]["energy_j"]
    assert len(rollup.find_rebounds([a[0], b[0]])) == 1  # the old rule, without the runs, would flag it
    found, within = rollup.check_rebounds([a[0], b[0]], spreads_of(a, b))
    assert found == [] and len(within) == 1 and within[0]["run_id"] == "b"
    noise = within[0]["interval"]
    assert noise["outside"] is False
    assert noise["mean_change_ci"][0] < 0 < noise["mean_change_ci"][1]  # J/run: no change is inside
    assert noise["total_change_ci"][0] > 0  # the total's rise alone is real
    assert within[0]["note"] == "within run-to-run noise: no rebound claimed"


@pytest.mark.parametrize("true_total_change, most", [(0.0, 0.05), (0.25, None)])
def test_rebound_with_repeats_rarely_fires_without_a_rise_and_nearly_always_with_one(true_total_change, most):
    """Over seeded trials: J/run truly falls 30 %; the total truly stays (the flag must fire in at
    most ~5 % of trials) or truly rises 25 % (it must fire in at least 90 %)."""
    fired = 0
    trials = 300
    for seed in range(trials):
        rng = random.Random(seed)
        a = noisy_sweep("a", 1, rng, configs=4, repeats=4, mean_j=100.0, sd_j=8.0, warmups=0)
        runs_b = round(16 * (1 + true_total_change) / 0.7)  # 0.7 x the J/run, so many runs for the total
        b = noisy_sweep("b", 2, rng, configs=runs_b // 3, repeats=3, mean_j=70.0, sd_j=5.6, warmups=0)
        fired += bool(rollup.find_rebounds([a[0], b[0]], spreads_of(a, b)))
    rate = fired / trials
    print(f"FIGURE rebound fire rate, true total change {true_total_change:+.0%}: {rate:.3f}")
    if most is not None:
        assert rate <= most
    else:
        assert rate >= 0.9


def test_without_repeats_the_old_rule_holds_and_says_it_has_no_interval():
    rng = random.Random(3)
    a = noisy_sweep("a", 1, rng, configs=4, repeats=1, mean_j=100.0, sd_j=5.0, warmups=0)  # groups of one
    b = noisy_sweep("b", 2, rng, configs=12, repeats=1, mean_j=60.0, sd_j=3.0, warmups=0)
    found = rollup.find_rebounds([a[0], b[0]], spreads_of(a, b))
    assert len(found) == 1
    assert found[0]["interval"] is None and found[0]["note"] == "no repeats: no interval"
    assert found[0]["label"] == (f"{rollup.format_percent(found[0]['mean_change'])} J/run, "
                                 f"{rollup.format_percent(found[0]['total_change'])} total")
    # one side with repeats is not enough for an interval; the note names the side without
    c = noisy_sweep("c", 3, rng, configs=30, repeats=3, mean_j=40.0, sd_j=2.0, warmups=0)
    found = rollup.find_rebounds([a[0], c[0]], spreads_of(a, c))
    assert found[0]["interval"] is None and found[0]["note"] == "no repeats: no interval (no repeats in a)"


def test_format_interval():
    assert rollup.format_interval(-0.38, -0.24) == "\u221238\u2026\u221224%"
    assert rollup.format_interval(0.4, 0.64) == "+40\u2026+64%"
def test_sweep_data_counts_hosts_and_processes():
    from ipython_energy.rollup import build_sweep_data

    rows = [{"run_id": f"r{i}", "run_index": i, "status": "finished", "energy_j": 1.0, "session": session,
             "host": host} for i, (host, session) in enumerate([("a", "s1"), ("a", "s2"), ("b", "s3")])]
    data = build_sweep_data({"name": "s"}, rows)
    assert data["totals"]["hosts"] == 2 and data["totals"]["processes"] == 3
    assert sorted(h["host"] for h in data["hosts"]) == ["a", "b"]
