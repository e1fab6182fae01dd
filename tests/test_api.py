"""The Python API (sweep/run/stage/flush) in plain scripts and worker processes, outside IPython.

Hardware seam: the replay sensor (flat 100 W + 20 W trace); MLflow is real (sqlite, or a real
``mlflow server`` process).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.mlflow_readback import sweep_energy

SCRIPT = textwrap.dedent("""
    import sys, time
    import ipython_energy as energy

    tag = sys.argv[1]
    with energy.sweep("shared", planned=6) as sw:
        for i in range(int(sys.argv[2])):
            with energy.run(params={"worker": tag, "i": i}) as run:
                with energy.stage("data"):
                    time.sleep(0.05)
                with energy.stage("forward"):
                    time.sleep(0.1)
                run.add_units(32, "samples")
    assert energy.flush(120), "flush timed out"
    print("TOTAL", sw.total_j)
""")


def run_script(tmp_path, env, *args, script=SCRIPT):
    path = tmp_path / "worker.py"
    path.write_text(script)
    return subprocess.Popen([sys.executable, str(path), *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def script_env(energy_home, trace, uri):
    env = dict(os.environ)
    env.update({"IPYTHON_ENERGY_HOME": str(energy_home), "IPYTHON_ENERGY_SENSORS": f"replay:{trace}",
                "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": os.pathsep.join(sys.path)})
    return env


def check_shared_sweep(uri, expected_children):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ipython-energy")
    runs = client.search_runs([exp.experiment_id])
    sweeps = [r for r in runs if r.data.tags["energy.kind"] == "sweep"]
    assert len(sweeps) == 1, "concurrent writers must share one parent run"
    parent = sweeps[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == expected_children
    total, in_runs = sweep_energy(client, parent, children)
    # The last logged total is exact (exactly rounded), whichever writer logged it: the runs' shares
    # and every process's time between them (docs/metrics.md, "Where a sweep's energy goes").
    history = sorted(client.get_metric_history(parent.info.run_id, "sweep_energy_j"), key=lambda m: (m.step, m.timestamp))
    assert history[-1].step == expected_children
    assert history[-1].value == total
    assert in_runs == math.fsum(c.data.metrics["energy_j"] for c in children)  # no run overlapped another in its process
    for child in children:
        m = child.data.metrics
        # The replay trace draws a steady 120 W (gpu0 100 W + cpu 20 W): each stage's joules are its
        # own seconds at that power (not compared with each other: a loaded machine stretches sleeps).
        for stage in ("data", "forward"):
            assert m[f"stage_{stage}_duration_s"] >= {"data": 0.05, "forward": 0.1}[stage]
            assert m[f"stage_{stage}_energy_j"] == pytest.approx(120.0 * m[f"stage_{stage}_duration_s"], rel=0.05)
        assert m["energy_per_samples_j"] == pytest.approx(m["energy_j"] / 32)
        assert child.info.status == "FINISHED"
    return parent, children


def test_script_outside_ipython_logs_like_the_magic(energy_home, flat_trace, sqlite_uri, tmp_path):
    proc = run_script(tmp_path, script_env(energy_home, flat_trace, sqlite_uri), "solo", "2")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    parent, children = check_shared_sweep(sqlite_uri, 2)
    # What the script printed is what MLflow has: the sweep's energy, its runs and the time between them.
    assert float(out.split("TOTAL")[1]) == pytest.approx(parent.data.metrics["sweep_energy_j"])
    assert parent.info.status == "FINISHED"
    assert children[0].data.tags["energy.methods"] == "gpu0=replay,cpu=replay"


def test_two_processes_write_one_sweep_sqlite(energy_home, flat_trace, sqlite_uri, tmp_path):
    env = script_env(energy_home, flat_trace, sqlite_uri)
    procs = [run_script(tmp_path, env, tag, "3") for tag in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    check_shared_sweep(sqlite_uri, 6)


def test_a_sweep_started_again_after_it_ended_continues_its_parent(energy_home, flat_trace, sqlite_uri, tmp_path):
    """A sweep is its name in its experiment: a second process that starts ``shared`` after the
    first closed it continues the same parent (on a08c2b1 it made a second parent, so the
    sweep's total and run numbers started again from zero)."""
    env = script_env(energy_home, flat_trace, sqlite_uri)
    for tag in ("monday", "tuesday"):
        proc = run_script(tmp_path, env, tag, "1")
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    parent, children = check_shared_sweep(sqlite_uri, 2)
    assert parent.info.status == "FINISHED", "closed again by its last member"
    assert sorted(int(c.data.tags["energy.run_index"]) for c in children) == [1, 2]
    assert len([k for k in parent.data.tags if k.startswith("energy.member.")]) == 2


@pytest.mark.server
def test_two_processes_write_one_sweep_server(energy_home, flat_trace, mlflow_server, tmp_path):
    env = script_env(energy_home, flat_trace, mlflow_server.uri)
    procs = [run_script(tmp_path, env, tag, "3") for tag in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    check_shared_sweep(mlflow_server.uri, 6)


@pytest.mark.server
@pytest.mark.slow
def test_two_processes_write_one_sweep_server_on_postgresql(energy_home, flat_trace, mlflow_server_pg, tmp_path):
    """The same two writers against an ``mlflow server`` backed by a real PostgreSQL server."""
    env = script_env(energy_home, flat_trace, mlflow_server_pg.uri)
    procs = [run_script(tmp_path, env, tag, "3") for tag in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    parent, children = check_shared_sweep(mlflow_server_pg.uri, 6)
    assert sorted(int(c.data.tags["energy.run_index"]) for c in children) == list(range(1, 7))
    assert "postgresql" in mlflow_server_pg.backend_store_uri


def test_api_errors_are_clear_and_log_nothing(energy_home, flat_trace, sqlite_uri, monkeypatch):
    monkeypatch.setenv("IPYTHON_ENERGY_SENSORS", f"replay:{flat_trace}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    import ipython_energy as energy
    from ipython_energy.runtime import set_tracker
    from ipython_energy.runs import BudgetExceeded

    set_tracker(None)
    try:
        bad = [
            (lambda: energy.sweep(""), "empty"),
            (lambda: energy.sweep(42), "string"),
            (lambda: energy.sweep("s", planned=0), "positive whole"),
            (lambda: energy.sweep("s", planned=2.5), "positive whole"),
            (lambda: energy.sweep("s", budget_j=float("nan")), "positive finite"),
            (lambda: energy.sweep("s", budget_j=-1), "positive finite"),
            (lambda: energy.run(params=["lr", 1]), "mapping"),
            (lambda: energy.run(params={"": 1}), "empty"),
            (lambda: energy.run("x" * 300), "too long"),
            (lambda: energy.stage("\n"), "empty"),
        ]
        for call, message in bad:
            with pytest.raises(ValueError, match=message):
                call()
        with energy.run("u") as run:
            for n, unit in ((0, "s"), (-1, "s"), (float("inf"), "s"), ("3", "s"), (True, "s"), (3, "")):
                with pytest.raises(ValueError):
                    run.add_units(n, unit)
        assert energy.flush(120)
        client = MlflowClient(sqlite_uri)
        (only,) = client.search_runs([client.get_experiment_by_name("ipython-energy").experiment_id])
        assert only.info.run_name == "u" and not any(k.startswith("units_") for k in only.data.metrics)
        with energy.sweep("capped", budget_j=1e-3, stop_at_budget=True):
            with energy.run("first"):
                pass
            with pytest.raises(BudgetExceeded, match="budget"):
                energy.run("second")
    finally:
        energy.tracker().close()
        set_tracker(None)


COMPARE = textwrap.dedent("""
    import time
    import ipython_energy as energy

    for name, runs, seconds in (("small", 2, 0.05), ("large", 3, 0.2)):
        with energy.sweep(name):
            for i in range(runs):
                with energy.run(params={"i": i}):
                    time.sleep(seconds)
    assert energy.flush(120)
""")


@pytest.mark.server
def test_mlflow_rest_api_compares_sweeps_by_total_joules(energy_home, flat_trace, mlflow_server, tmp_path):
    """What MLflow's UI does to compare sweeps (a runs/search with filter and order_by), via its REST API."""
    import json
    import urllib.request

    proc = run_script(tmp_path, script_env(energy_home, flat_trace, mlflow_server.uri), script=COMPARE)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    client = MlflowClient(mlflow_server.uri)
    exp_id = client.get_experiment_by_name("ipython-energy").experiment_id
    body = json.dumps({"experiment_ids": [exp_id], "filter": "tags.`energy.kind` = 'sweep'",
                       "order_by": ["metrics.sweep_energy_j DESC"]}).encode()
    request = urllib.request.Request(mlflow_server.uri + "/api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        found = json.load(response)["runs"]
    names = [r["info"]["run_name"] for r in found]
    totals = [next(m["value"] for m in r["data"]["metrics"] if m["key"] == "sweep_energy_j") for r in found]
    assert names == ["large", "small"]
    assert totals[0] > totals[1] > 0
