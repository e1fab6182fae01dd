"""Concurrent trials in one process: each thread and asyncio task has its own active run
(ipython_energy/scope.py), and runs that overlap on the same devices are flagged.

The meter runs on an injected clock that only the test moves, over a replay sensor at a flat
100 W (the hardware seam), so every figure is exact.  Everything above it is real: the public
API (``energy.run``, ``energy.sweep``) on the process's tracker, its ledger, the writer, and an
MLflow sqlite store read back at the end.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import ipython_energy as energy
from ipython_energy.config import from_env
from ipython_energy.runtime import new_tracker, set_tracker
from tests.helpers.mlflow_readback import named_sweep

WATTS = 100.0  # the driven_tracker fixture's flat trace


def test_trials_in_a_thread_pool_each_have_their_own_run_in_the_notebooks_sweep(driven_tracker):
    """An Optuna ``n_jobs=2`` search, as a thread pool runs it: the notebook starts sweep ``pool``,
    trial a runs on one worker 0-3 s, trial b on another 1-4 s, each in ``with energy.run()``.
    The pool's threads never set a sweep: they join the main thread's.  Each trial is its own
    run (300 J: the whole machine over its window), both children of the sweep, both flagged as
    sharing devices, and the sweep counts the machine once (400 J)."""
    tracker, ticks, uri = driven_tracker
    sweep = energy.sweep("pool")
    started = {name: threading.Event() for name in "ab"}
    finish = {name: threading.Event() for name in "ab"}

    def trial(name):
        with energy.run(name) as run:
            assert tracker.run is None, "energy.run() does not make a run the notebook's active run"
            started[name].set()
            assert finish[name].wait(30)
        return run, threading.current_thread().name

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="trial") as pool:
        fa = pool.submit(trial, "a")
        assert started["a"].wait(30)
        ticks.run(1.0)
        fb = pool.submit(trial, "b")  # the first worker is busy: a second thread takes it
        assert started["b"].wait(30)
        ticks.run(2.0)
        finish["a"].set()
        a, thread_a = fa.result(30)
        ticks.run(1.0)
        finish["b"].set()
        b, thread_b = fb.result(30)
    sweep.end()
    assert thread_a != thread_b
    assert a.sweep is sweep and b.sweep is sweep
    assert a.parent is None and b.parent is None, "runs of two threads are siblings, never nested"
    assert a.measurement.energy_j == pytest.approx(WATTS * 3)
    assert b.measurement.energy_j == pytest.approx(WATTS * 3)
    assert sweep.total_j == pytest.approx(WATTS * 4)
    assert sweep.overlapping_runs == 2
    assert energy.flush(120)

    parent, children, _ = named_sweep(uri, "pool")
    assert sorted(children) == ["a", "b"]
    assert parent.data.metrics["sweep_energy_j"] == pytest.approx(WATTS * 4)
    assert parent.data.metrics["sweep_runs"] == 2
    assert parent.data.tags["energy.overlapping_runs"] == "2"
    for name, thread in (("a", thread_a), ("b", thread_b)):
        run = children[name]
        assert run.data.metrics["energy_j"] == pytest.approx(WATTS * 3)
        assert run.data.metrics["sweep_share_energy_j"] == pytest.approx(WATTS * 2)
        assert run.data.tags["energy.shares_devices"] == "true"
        assert run.data.tags["energy.thread"] == thread
        assert run.data.tags["energy.pid"] == str(os.getpid())


def test_a_run_of_one_thread_is_never_the_parent_of_another_threads_run(driven_tracker):
    """The notebook opens run ``outer`` (and makes a run active with ``%energy run``'s call); a
    thread that inherits the main thread's context (``copy_context().run``, as Python 3.14's
    ``thread_inherit_context`` does for every thread) and a plain thread each open a run: both
    are children of the sweep, not of ``outer``; neither sees the active run or puts a stage in it."""
    tracker, ticks, uri = driven_tracker
    sweep = energy.sweep("apart")
    outer = energy.run("outer")
    active = tracker.start_run("active", activate=True)
    assert tracker.run is active and active.parent is outer
    seen = {}

    def body(name):
        seen[name] = (tracker.run, tracker.sweep)
        with energy.run(name) as run:
            with energy.stage("data") as stage:
                ticks.run(0.5)
        seen[name] += (run, stage)

    copied = contextvars.copy_context()
    threads = [threading.Thread(target=copied.run, args=(body, "inherited"), name="inherited"),
               threading.Thread(target=body, args=("plain",), name="plain")]
    for thread in threads:
        thread.start()
        thread.join(30)
    active.end()
    outer.end()
    sweep.end()
    for name in ("inherited", "plain"):
        active_seen, sweep_seen, run, stage = seen[name]
        assert active_seen is None, f"{name}: another thread's active run"
        assert sweep_seen is sweep, f"{name}: the notebook's sweep"
        assert run.parent is None and run.sweep is sweep
        assert stage.run is run, f"{name}: its stage belongs to its own run"
    assert "stage_data_energy_j" not in outer.stages and not active.stages
    assert energy.flush(120)

    parent, children, runs = named_sweep(uri, "apart")
    assert sorted(children) == ["inherited", "outer", "plain"]
    assert runs["active"].data.tags["mlflow.parentRunId"] == children["outer"].info.run_id
    assert children["plain"].data.tags["energy.thread"] == "plain"
    assert "stage_data_energy_j" in children["plain"].data.metrics


def test_asyncio_tasks_have_their_own_runs_and_nest_in_their_creators(driven_tracker):
    """Two tasks gathered outside any run are siblings that overlap (a 0-3 s, b 1-4 s: flagged,
    400 J for the sweep); a task made inside run ``outer`` nests its run there."""
    tracker, ticks, uri = driven_tracker
    sweep = energy.sweep("tasks")

    async def trial(name, hold):
        with energy.run(name) as run:
            await hold.wait()
        return run

    async def main():
        hold = {name: asyncio.Event() for name in ("a", "b", "inner")}
        ta = asyncio.create_task(trial("a", hold["a"]))
        await asyncio.sleep(0)
        ticks.run(1.0)
        tb = asyncio.create_task(trial("b", hold["b"]))
        await asyncio.sleep(0)
        ticks.run(2.0)
        hold["a"].set()
        a = await ta
        ticks.run(1.0)
        hold["b"].set()
        b = await tb
        with energy.run("outer") as outer:
            hold["inner"].set()
            inner = await asyncio.create_task(trial("inner", hold["inner"]))
        return a, b, outer, inner

    a, b, outer, inner = asyncio.run(main())
    sweep.end()
    assert a.parent is None and b.parent is None
    assert inner.parent is outer
    assert a.measurement.energy_j == pytest.approx(WATTS * 3)
    assert sweep.overlapping_runs == 2
    assert sweep.runs_energy_j == pytest.approx(WATTS * 4)
    assert energy.flush(120)
    parent, children, runs = named_sweep(uri, "tasks")
    assert sorted(children) == ["a", "b", "outer"]
    assert children["a"].data.tags["energy.shares_devices"] == "true"
    assert runs["inner"].data.tags["mlflow.parentRunId"] == children["outer"].info.run_id


def test_a_thread_follows_the_notebooks_current_sweep(driven_tracker):
    """A pool thread that ran a trial of sweep one runs the next trial in sweep two once the
    notebook has moved on, and outside any sweep once the notebook has ended it."""
    tracker, ticks, uri = driven_tracker
    with ThreadPoolExecutor(max_workers=1) as pool:
        def trial(name):
            with energy.run(name) as run:
                ticks.run(0.1)
            return run

        with energy.sweep("one") as one:
            first = pool.submit(trial, "first").result(30)
        with energy.sweep("two") as two:
            second = pool.submit(trial, "second").result(30)
        third = pool.submit(trial, "third").result(30)
    assert (first.sweep, second.sweep, third.sweep) == (one, two, None)


def test_an_optuna_search_with_two_jobs_puts_each_trial_in_the_notebooks_sweep(energy_home, flat_trace, sqlite_uri):
    """A real Optuna study, ``n_jobs=2`` (its own thread pool), whose objective opens
    ``energy.run()``: every trial is a child of the sweep the main thread started, none nested in
    another, each tagged with the pool thread that ran it.  Replay sensor, real clock."""
    optuna = pytest.importorskip("optuna")
    config, _ = from_env({"IPYTHON_ENERGY_SENSORS": f"replay:{flat_trace}"})
    tracker = new_tracker(config.with_values(tracking_uri=sqlite_uri), register=False)
    set_tracker(tracker)
    try:
        def objective(trial):
            x = trial.suggest_float("x", -1, 1)
            with energy.run(f"trial {trial.number}", params={"x": x}) as run:
                threading.Event().wait(0.3)
            assert run.parent is None
            return x * x

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with energy.sweep("optuna") as sweep:
            optuna.create_study().optimize(objective, n_trials=4, n_jobs=2)
        assert sweep.finished_runs == 4
        assert energy.flush(120)
    finally:
        set_tracker(None)
        tracker.close()
    parent, children, _ = named_sweep(sqlite_uri, "optuna")
    assert sorted(children) == [f"trial {i}" for i in range(4)]
    threads = {c.data.tags["energy.thread"] for c in children.values()}
    assert "MainThread" not in threads and 1 <= len(threads) <= 2
    assert parent.data.metrics["sweep_runs"] == 4
