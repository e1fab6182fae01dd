"""Recent runs one by one, older runs binned, energy per host (ipython_energy/sweep_window.py),
and the cached rebuild of a big sweep (rollup.build_sweep_data with a cache)."""

from __future__ import annotations

import math

import pytest

from ipython_energy.rollup import build_sweep_data
from ipython_energy.sweep_window import bin_size, hosts, window


def rows(n: int, *, running_last: bool = False, hosts_n: int = 1) -> list[dict]:
    out = []
    for i in range(n):
        running = running_last and i == n - 1
        out.append({"run_id": f"r{i}", "name": f"run-{i + 1}", "run_index": i + 1, "start_time_ms": i,
                    "status": "running" if running else "finished",
                    "energy_j": None if running else 10.0 + i % 7, "live_energy_j": 3.0 if running else None,
                    "host": f"h{i % hosts_n}", "session": f"s{i % hosts_n}-{i % 2}", "params": {}, "provenance": {}})
    return out


@pytest.mark.parametrize("older,size", [(1, 1), (100, 1), (101, 2), (200, 2), (201, 5), (1000, 10),
                                        (9800, 100), (10000, 100), (10001, 200)])
def test_bin_size_steps_through_1_2_5(older, size):
    assert bin_size(older) == size


def test_few_runs_are_not_binned():
    data = build_sweep_data({"name": "s"}, rows(150))
    kept, bins = window(data["runs"])
    assert kept == data["runs"] and bins == []


def test_older_runs_fold_into_aligned_bins_that_add_up():
    data = build_sweep_data({"name": "s"}, rows(1000))
    kept, bins = window(data["runs"], recent=200)
    assert len(bins) <= 100 and all(b["runs"] == 10 for b in bins)  # 800 older runs, bins of 10
    assert [b["first"] for b in bins] == list(range(1, 801, 10)) and kept[0]["index"] == 801
    assert math.fsum(b["energy_j"] for b in bins) == pytest.approx(
        math.fsum(r["energy_j"] for r in data["runs"][:800]))
    assert bins[3]["cumulative_j"] == data["runs"][39]["cumulative_j"]
    assert bins[0]["min_j"] == 10.0 and bins[0]["max_j"] == 16.0


def test_a_growing_sweep_changes_only_its_newest_bin():
    """Bins end on multiples of their size, so one more run leaves every older bin as it was."""
    before = window(build_sweep_data({"name": "s"}, rows(1000))["runs"])[1]
    after = window(build_sweep_data({"name": "s"}, rows(1009))["runs"])[1]
    assert after[: len(before)] == before


def test_runs_not_read_yet_are_one_bin_from_the_logged_totals():
    data = build_sweep_data({"name": "s"}, rows(5), earlier={"runs": 995, "energy_j": 9950.0})
    assert [r["index"] for r in data["runs"]] == [996, 997, 998, 999, 1000]
    assert data["totals"]["runs"] == 1000 and data["totals"]["ended_runs"] == 1000
    assert data["totals"]["energy_j"] == pytest.approx(9950.0 + sum(10.0 + i % 7 for i in range(5)))
    kept, bins = window(data["runs"], earlier=data["earlier"])
    assert len(kept) == 5 and bins[0]["loading"] and bins[0]["runs"] == 995 and bins[0]["last"] == 995


def test_hosts_count_energy_runs_and_processes():
    data = build_sweep_data({"name": "s"}, rows(12, running_last=True, hosts_n=3))
    per_host = {h["host"]: h for h in data["hosts"]}
    assert set(per_host) == {"h0", "h1", "h2"}
    assert per_host["h2"]["runs"] == 4 and per_host["h2"]["processes"] == 2
    assert math.fsum(h["energy_j"] for h in data["hosts"]) == pytest.approx(data["totals"]["energy_j"])
    assert data["totals"]["hosts"] == 3 and data["totals"]["processes"] == 6
    assert hosts([{"energy_j": 1.0}]) == [{"host": "unknown", "runs": 1, "energy_j": 1.0, "processes": 0}]


def test_a_cached_rebuild_equals_a_fresh_one():
    """The reader keeps unchanged rows as the same objects; a rebuild with the cache reuses the runs
    before the first running one and must give exactly what a build from scratch gives."""
    cache: dict = {}
    table = rows(500, running_last=True, hosts_n=2)
    first = build_sweep_data({"name": "s"}, table, cache=cache)
    assert first == build_sweep_data({"name": "s"}, table)
    table[-1] = {**table[-1], "live_energy_j": 9.0}  # the running run moved on
    table.append({**rows(501)[-1], "status": "running", "energy_j": None, "live_energy_j": 1.0})
    again = build_sweep_data({"name": "s"}, table, cache=cache)
    assert again == build_sweep_data({"name": "s"}, table)
    assert again["runs"][10] is first["runs"][10]  # reused, not recomputed
    table[3] = {**table[3], "energy_j": 99.0}  # an older run changed: everything after it moves
    assert build_sweep_data({"name": "s"}, table, cache=cache) == build_sweep_data({"name": "s"}, table)
