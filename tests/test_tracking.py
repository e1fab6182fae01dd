"""What a sweep counts, through the Python API and the Tracker: nested runs counted once, the
session's figures equal to MLflow's, and a tracker whose memory does not grow with every run.

Hardware seam: the replay sensor (tests/faults/faultkit.py ``flat_replay``, 100 W flat), so every
energy is watts x seconds; the writer and the MLflow sqlite store are real, read back with the
MLflow client (tests/helpers/mlflow_readback.py).
"""

from __future__ import annotations

import gc
import math
import time
import tracemalloc

import os

import pytest

import ipython_energy
from tests.faults.faultkit import figure, flat_replay, make_tracker
from tests.helpers.mlflow_readback import assert_sweep_total_exact, history, runs, split_sweep


def test_a_run_nested_in_another_is_counted_once(tracker, sqlite_uri):
    """Issue 13, item 7b: a run opened inside another run of a sweep was a second child of the
    sweep, its energy summed twice (120 J for 90 J drawn)."""
    with ipython_energy.sweep("nest") as sw:
        with ipython_energy.run("outer") as outer:
            time.sleep(0.1)
            with ipython_energy.run("inner") as inner:
                time.sleep(0.2)
                with ipython_energy.run("innermost") as innermost:
                    time.sleep(0.05)
            time.sleep(0.1)
        with ipython_energy.run("after") as after:
            time.sleep(0.1)
    # What the user is shown: the top-level runs only, each counted once.
    assert sw.finished_runs == 2
    assert sw.ledger.runs_j == pytest.approx(math.fsum([outer.energy_j, after.energy_j]), rel=1e-12)
    assert "over 2 run(s)" in sw.describe()
    assert ipython_energy.flush(120)

    client, found = runs(sqlite_uri)
    (parent,), children = split_sweep(found)
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == {"outer", "inner", "innermost", "after"}
    top = [by_name["outer"], by_name["after"]]
    # MLflow's parent link: the sweep's direct children are the top-level runs; the nested ones hang
    # under the run they were opened in, and name their sweep and that run.
    assert_sweep_total_exact(client, parent, top)
    assert by_name["inner"].data.tags["mlflow.parentRunId"] == by_name["outer"].info.run_id
    assert by_name["innermost"].data.tags["mlflow.parentRunId"] == by_name["inner"].info.run_id
    for name, enclosing in (("inner", "outer"), ("innermost", "inner")):
        tags = by_name[name].data.tags
        assert tags["energy.sweep"] == "nest" and tags["energy.parent_run"] == enclosing
        assert "energy.run_index" not in tags
    assert sorted(r.data.tags["energy.run_index"] for r in top) == ["1", "2"]
    energy = {name: r.data.metrics["energy_j"] for name, r in by_name.items()}
    assert energy["inner"] < energy["outer"] and energy["innermost"] < energy["inner"]
    # Exact: the sweep's total is what the session showed, and does not hold the nested runs again.
    assert parent.data.metrics["sweep_energy_j"] == sw.total_j
    assert parent.data.metrics["sweep_runs_energy_j"] == math.fsum([energy["outer"], energy["after"]])
    assert parent.data.metrics["sweep_runs"] == 2
    assert [m.value for m in history(client, parent.info.run_id, "sweep_runs")] == [1, 2]
    assert inner.parent is outer and innermost.parent is inner and after.parent is None


def test_runs_one_after_another_stay_siblings(tracker, sqlite_uri):
    """Sequential runs (and ``%energy run`` replacing the active run) are not nested."""
    sw = ipython_energy.sweep("seq")
    first = tracker.start_run("first", activate=True)
    time.sleep(0.05)
    second = tracker.start_run("second", activate=True)  # ends "first", then starts
    time.sleep(0.05)
    second.end()
    with ipython_energy.run("third") as third:
        time.sleep(0.05)
    sw.end()
    assert first.parent is None and second.parent is None and third.parent is None
    assert sw.finished_runs == 3
    assert ipython_energy.flush(120)
    client, found = runs(sqlite_uri)
    (parent,), children = split_sweep(found)
    assert_sweep_total_exact(client, parent, children)
    assert parent.data.metrics["sweep_energy_j"] == sw.total_j


def test_a_sweeps_plan_change_reaches_mlflow_through_the_api(tracker, sqlite_uri):
    """Issue 13, item 7c, from Python: ``sweep(name, planned=…)`` again changes the running sweep's plan."""
    sw = ipython_energy.sweep("plan", planned=3, budget_j=10.0)
    for _ in range(2):
        with ipython_energy.run():
            time.sleep(0.1)  # 100 W: ~10 J each, so over the 10 J budget after two
    assert sw.over_budget
    assert ipython_energy.sweep("plan", planned=6, budget_j=5000.0) is sw
    assert not sw.over_budget and sw.forecast_j == sw.total_j / 2 * 6
    assert ipython_energy.flush(120)
    client, found = runs(sqlite_uri)
    (parent,), _ = split_sweep(found)
    tags, metrics = parent.data.tags, parent.data.metrics
    assert tags["energy.planned"] == "6" and float(tags["energy.budget_j"]) == 5000.0
    assert tags["energy.budget_state"] == "ok"
    assert metrics["sweep_budget_j"] == 5000.0
    assert metrics["sweep_forecast_energy_j"] == sw.forecast_j
    assert [m.value for m in history(client, parent.info.run_id, "sweep_budget_j")] == [10.0, 5000.0]
    # The change is one event; applied again (a replay, a retry in doubt) it writes nothing new.
    from ipython_energy.events import SweepUpdate

    points = {key: len(history(client, parent.info.run_id, key))
              for key in ("sweep_budget_j", "sweep_forecast_energy_j", "sweep_energy_j")}
    (store,) = tracker.writer.stores()
    store.apply(SweepUpdate(sw.uid, 1, planned=6, budget_j=5000.0), {}, True)
    assert points == {key: len(history(client, parent.info.run_id, key)) for key in points}


RUNS = 2000
WARM = 500


def test_the_tracker_keeps_no_per_run_records(energy_home, sqlite_uri, capfd):
    """Issue 13, item 8: a kernel grew ~0.5 KiB per logged run, for good (each finished Run, with its
    Measurement and window, stayed in its sweep's list: 2.7 KB per run with logging off).  Now a
    finished run leaves its sweep its energy and status (9 bytes), and the last CHART_DETAIL_RUNS
    runs' rows for the chart.

    Measured with tracemalloc on what the tracker's modules allocate and keep, between run WARM and
    run RUNS of one sweep, with logging off (the writer, which bounds its own memory, keeps the
    events it was handed, allocated here; test_finished_runs_are_not_kept_when_logged covers that case).
    """
    t = make_tracker([flat_replay({"gpu0": 100.0})], sqlite_uri)
    t.config = t.config.with_values(log=False)
    ours = [tracemalloc.Filter(True, f"*ipython_energy/{name}.py")
            for name in ("tracking", "runs", "meter", "measurement", "validate", "layout", "rollup", "edges")]
    tracemalloc.start(1)
    try:
        sw = t.start_sweep("soak")

        def block(n):
            for i in range(n):
                run = t.start_run(params={"i": i})
                run.add_units(10, "samples")
                run.end()

        block(WARM)
        t.meter.session()  # folds the session's chain of edges (bounded; its live thread does so every second)
        gc.collect()
        before = tracemalloc.take_snapshot().filter_traces(ours)
        block(RUNS - WARM)
        t.meter.session()
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(ours)
    finally:
        tracemalloc.stop()
        t.close()
    grown = sum(d.size_diff for d in after.compare_to(before, "filename"))
    per_run = grown / (RUNS - WARM)
    figure(capfd, f"tracker memory kept per run over {RUNS - WARM} runs: {per_run:.1f} bytes")
    assert per_run < 32, f"{per_run:.0f} bytes kept per run: " + "; ".join(
        str(d) for d in after.compare_to(before, "lineno")[:5])
    from ipython_energy.runs import CHART_DETAIL_RUNS

    assert WARM >= CHART_DETAIL_RUNS  # the chart's rows were all replaced in the measured stretch
    assert sw.finished_runs == RUNS and len(sw.details) == CHART_DETAIL_RUNS
    assert sw.ledger.runs_j == pytest.approx(math.fsum(sw.energies), rel=1e-9)


def test_finished_runs_are_not_kept_when_logged(tracker, sqlite_uri):
    """The same with logging on: once ended (and the writer has the events), no Run object is left."""
    import weakref

    sw = ipython_energy.sweep("kept")
    refs = []
    for i in range(20):
        with ipython_energy.run(params={"i": i}) as run:
            with ipython_energy.run("nested") as nested:
                pass
        refs += [weakref.ref(run), weakref.ref(nested)]
    del run, nested
    assert ipython_energy.flush(120)
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert sw.finished_runs == 20
    client, found = runs(sqlite_uri)
    (parent,), children = split_sweep(found)
    assert parent.data.metrics["sweep_energy_j"] == sw.total_j
    assert parent.data.metrics["sweep_runs"] == 20 and len(children) == 40


def test_annotate_refuses_what_mlflow_cannot_store_and_a_run_that_ended(tracker):
    from ipython_energy.runs import EnergyError

    with ipython_energy.run("annotated") as run:
        with pytest.raises(ValueError, match="finite number"):
            run.annotate(metrics={"optuna_value": float("nan")})
        with pytest.raises(ValueError, match="cannot be stored by MLflow"):
            run.annotate(params={"../lr": 1})
        assert not (run.extra_params or run.extra_metrics)  # nothing half-added
        run.annotate(params={"lr": 0.1}, tags={"optuna.state": "COMPLETE"}, metrics={"optuna_value": 2})
    with pytest.raises(EnergyError, match="has ended"):
        run.annotate(tags={"late": "1"})
    assert (run.extra_params, run.extra_tags, run.extra_metrics) == (
        {"lr": "0.1"}, {"optuna.state": "COMPLETE"}, {"optuna_value": 2.0})


def test_a_sweep_on_the_sqlite_store_is_made_under_a_file_lock_without_a_warning(tracker, sqlite_uri, caplog):
    """Every writer of a sqlite store is on this host, so the parent is made under a lock file
    beside the database instead of the election's wait, and nothing warns of two parents."""
    import logging

    caplog.set_level(logging.WARNING, logger="ipython_energy")
    with ipython_energy.sweep("locked"):
        with ipython_energy.run("one"):
            pass
    assert ipython_energy.flush(60)
    db = sqlite_uri[len("sqlite:///"):]
    assert os.path.exists(db + ".ipython-energy.lock")
    assert not [r for r in caplog.records if "two parents may remain" in r.getMessage()], caplog.text
    _client, found = runs(sqlite_uri)
    sweeps, children = split_sweep(found)
    assert len(sweeps) == 1 and sweeps[0].data.tags.get("energy.elected") == "true" and len(children) == 1
