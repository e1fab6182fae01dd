"""A wall-clock jump (NTP step, suspend, a user changing the date) mid-window changes no energy figure.

Through the real magic, sampler, Meter, writer and an MLflow sqlite store; hardware seam: the
replay sensor (flat 120 W trace, so the truth is 120 W x the monotonic duration).  ``time.time``
is replaced mid-cell, for the whole process (MLflow's timestamps jump with it), forward by a day
and then back by two hours.  The Meter-level proof is
tests/test_meter.py::test_wall_clock_jump_changes_no_energy.
"""

from __future__ import annotations

import time

import pytest

import ipython_energy
from tests.helpers.mlflow_readback import assert_sweep_total_exact, split_sweep
from tests.helpers.mlflow_readback import runs as mlflow_runs

REAL_TIME = time.time


@pytest.fixture
def ip(open_shell, flat_trace, sqlite_uri):
    shell = open_shell(env={"IPYTHON_ENERGY_SENSORS": f"replay:{flat_trace}", "MLFLOW_TRACKING_URI": sqlite_uri,
                            "IPYTHON_ENERGY_QUIET": "true"})
    shell.user_ns["REAL_TIME"] = REAL_TIME
    yield shell
    time.time = REAL_TIME


JUMPS = {
    "steady": "",
    "forward 1 day": "time.time = lambda: REAL_TIME() + 86400.0\n",
    "back 2 hours": "time.time = lambda: REAL_TIME() - 7200.0\n",
}


def test_wall_clock_jumps_mid_cell_change_no_energy(ip, sqlite_uri):
    ip.run_line_magic("energy", "sweep clock")
    measured = {}
    for label, jump in JUMPS.items():
        t0 = time.perf_counter()
        cell = f"%%energy -o m --run '{label}'\nimport time\ntime.sleep(0.3)\n{jump}time.sleep(0.3)"
        assert ip.run_cell(cell).success
        elapsed = time.perf_counter() - t0
        m = ip.user_ns["m"]
        measured[label] = m
        assert 0.6 <= m.duration_s <= elapsed  # monotonic, not wall-clock, duration
        for domain, watts in (("gpu0", 100.0), ("cpu", 20.0)):
            assert m.domains[domain] == pytest.approx(watts * m.duration_s, rel=0.005), (label, domain)
        assert m.coverage == 1.0 and not m.has_gaps
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(120)
    time.time = REAL_TIME
    client, runs = mlflow_runs(sqlite_uri)
    sweeps, children = split_sweep(runs)
    (parent,) = sweeps
    children = [c for c in children if c.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.info.run_name for c in children) == sorted(JUMPS)
    for child in children:
        m = measured[child.info.run_name]
        assert child.data.metrics["energy_j"] == m.energy_j
        assert child.data.metrics["duration_s"] == m.duration_s
        assert [p.value for p in client.get_metric_history(child.info.run_id, "cell_energy_j")] == [m.energy_j]
    assert_sweep_total_exact(client, parent, children)
