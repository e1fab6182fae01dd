"""A sweep's energy is the energy of the sweep, not the sum of its runs (docs/metrics.md, "A sweep").

The meter runs on an injected clock that only the test moves, over a replay sensor at a flat
100 W (the hardware seam), so every figure is exact: power x seconds.  Everything above it is
real: the tracker, its ledger, the writer and an MLflow sqlite store read back at the end.
"""

from __future__ import annotations

import threading

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.mlflow_readback import named_sweep

WATTS = 100.0  # the driven_tracker fixture's flat trace


def test_time_between_runs_is_part_of_the_sweep(driven_tracker):
    """2 s before the first run, 3 s run, 1 s gap, 2 s run, 1 s after: 900 J, 500 J in runs."""
    tracker, ticks, uri = driven_tracker
    sweep = tracker.start_sweep("gaps")
    ticks.run(2.0)
    first = tracker.start_run("first", sweep=sweep)
    ticks.run(3.0)
    tracker.end_run(first)
    ticks.run(1.0)
    second = tracker.start_run("second", sweep=sweep)
    ticks.run(2.0)
    tracker.end_run(second)
    assert sweep.total_j == pytest.approx(WATTS * 8)  # up to the second run's end
    ticks.run(1.0)
    tracker.end_sweep(sweep)
    assert sweep.total_j == pytest.approx(WATTS * 9)
    assert sweep.runs_energy_j == pytest.approx(WATTS * 5)
    assert sweep.between_runs_energy_j == pytest.approx(WATTS * 4)
    assert "over 2 run(s), in runs 500 J, between runs 400 J" in sweep.describe()
    assert tracker.flush(120)

    parent, children, _ = named_sweep(uri, "gaps")
    m = parent.data.metrics
    assert m["sweep_energy_j"] == pytest.approx(WATTS * 9)
    assert m["sweep_runs_energy_j"] == pytest.approx(WATTS * 5)
    assert m["sweep_between_runs_energy_j"] == pytest.approx(WATTS * 4)
    assert m["sweep_runs"] == 2
    assert m["sweep_mean_energy_per_run_j"] == pytest.approx(WATTS * 9 / 2)
    assert children["first"].data.metrics["sweep_gap_before_energy_j"] == pytest.approx(WATTS * 2)
    assert children["second"].data.metrics["sweep_gap_before_energy_j"] == pytest.approx(WATTS * 1)
    assert children["first"].data.metrics["sweep_share_energy_j"] == children["first"].data.metrics["energy_j"]
    history = sorted((p.step, p.timestamp, p.value) for p in
                     MlflowClient(uri).get_metric_history(parent.info.run_id, "sweep_energy_j"))
    assert [round(v) for _s, _t, v in history] == [500, 800, 900], "rising, then the time after the last run"


class _Worker:
    """A thread of its own that runs what it is handed (a thread pool's worker), kept alive."""

    def __init__(self):
        self.jobs, self.results = [], []
        self.ready, self.done = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            self.ready.wait()
            self.ready.clear()
            job = self.jobs.pop()
            if job is None:
                return
            self.results.append(job())
            self.done.set()

    def call(self, job):
        self.done.clear()
        self.jobs.append(job)
        self.ready.set()
        assert self.done.wait(30)
        return self.results[-1]

    def stop(self):
        self.jobs.append(None)
        self.ready.set()
        self.thread.join(5)


def test_overlapping_runs_in_threads_count_the_machine_once_and_say_so(driven_tracker):
    """Run a on one thread 0-3 s, run b on another 1-4 s: each measures 300 J (the whole machine),
    the sweep's runs 400 J, each run's share 200 J, both flagged."""
    tracker, ticks, uri = driven_tracker
    sweep = tracker.start_sweep("threads")
    workers = [_Worker(), _Worker()]
    try:
        a = workers[0].call(lambda: tracker.start_run("a", sweep=sweep))
        ticks.run(1.0)
        b = workers[1].call(lambda: tracker.start_run("b", sweep=sweep))
        assert a.parent is None and b.parent is None, "runs of two threads are siblings, not nested"
        ticks.run(2.0)
        workers[0].call(lambda: tracker.end_run(a))
        ticks.run(1.0)
        workers[1].call(lambda: tracker.end_run(b))
    finally:
        for worker in workers:
            worker.stop()
    tracker.end_sweep(sweep)
    assert a.measurement.energy_j == pytest.approx(WATTS * 3)
    assert b.measurement.energy_j == pytest.approx(WATTS * 3)
    assert sweep.runs_energy_j == pytest.approx(WATTS * 4)
    assert sweep.total_j == pytest.approx(WATTS * 4)
    assert "2 run(s) overlapped on the same devices" in sweep.describe()
    assert tracker.flush(120)

    parent, children, _ = named_sweep(uri, "threads")
    assert parent.data.metrics["sweep_runs_energy_j"] == pytest.approx(WATTS * 4)
    assert parent.data.metrics["sweep_energy_j"] == pytest.approx(WATTS * 4)
    assert parent.data.tags["energy.overlapping_runs"] == "2"
    for name in ("a", "b"):
        run = children[name]
        assert run.data.metrics["energy_j"] == pytest.approx(WATTS * 3)
        assert run.data.metrics["sweep_share_energy_j"] == pytest.approx(WATTS * 2)
        assert run.data.tags["energy.shares_devices"] == "true"


def test_a_run_nested_in_the_same_thread_is_still_nested(driven_tracker):
    tracker, ticks, uri = driven_tracker
    sweep = tracker.start_sweep("nest")
    outer = tracker.start_run("outer", sweep=sweep)
    inner = tracker.start_run("inner", sweep=sweep)
    ticks.run(1.0)
    tracker.end_run(inner)
    tracker.end_run(outer)
    tracker.end_sweep(sweep)
    assert inner.parent is outer
    assert sweep.finished_runs == 1 and sweep.total_j == pytest.approx(WATTS * 1)
