"""Transport faults between the writer and a real ``mlflow server``: answers lost after the server
committed the request, a server that answers, but slowly, and what the user is told of each
condition (MLflow out of reach, slow, the spool's disk full).

A real HTTP proxy (tests/helpers/proxy.py) sits in front of a real ``mlflow server`` process: it
forwards every request (the server processes and commits it), then answers HTTP 500 instead of
the server's answer for a seeded 30 % of the requests, adds 2 s to every answer, or (``down``)
drops every connection unanswered.  The tracker
measures with the replay sensor (a flat trace: the hardware seam); everything else is real.  What
MLflow holds is read straight from the server, not through the proxy.
"""

from __future__ import annotations

import re
import time

import pytest

import test_fault_backend as backend_faults
from faultkit import (assert_one_total_per_step, assert_sweep_total_exact, figure, flat_replay, history,
                      make_tracker, mlflow_runs, split_sweep, wait_until)

small_fs = backend_faults.small_fs  # a small tmpfs the test fills (root only)


def run_sweep(tracker, runs: int, run_s: float = 0.05) -> dict[str, float]:
    """A sweep of ``runs`` runs of ``run_s`` each (the workload); the energy each measured, by run name."""
    energies = {}
    tracker.start_sweep("grid", planned=runs)
    for i in range(runs):
        run = tracker.start_run(params={"i": i})
        time.sleep(run_s)  # the run's workload, measured by the replay sensor
        energies[run.name] = tracker.end_run(run).energy_j
    tracker.end_sweep()
    return energies


def assert_arrived_once(uri: str, energies: dict[str, float]) -> None:
    """One parent; each run once, ended, with its own energy and a unique index; the sweep total exact."""
    client, found = mlflow_runs(uri)
    sweeps, children = split_sweep(found)
    assert [s.info.run_name for s in sweeps] == ["grid"], "one sweep parent"
    (parent,) = sweeps
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == sorted(energies), "each run exactly once"
    assert len({c.data.tags["energy.uid"] for c in children}) == len(children)
    indices = sorted(int(c.data.tags["energy.run_index"]) for c in children)
    assert indices == list(range(1, len(energies) + 1)), indices
    for child in children:
        assert child.info.status == "FINISHED", child.info.run_name
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert [m.value for m in history(client, child.info.run_id, "energy_j")] == [energies[child.info.run_name]]
    assert_sweep_total_exact(client, parent, children)
    assert_one_total_per_step(client, parent)


@pytest.mark.slow
@pytest.mark.server
def test_sweep_through_a_proxy_that_answers_30_percent_with_500_after_forwarding(energy_home, mlflow_server,
                                                                                   proxy, capfd):
    """MLflow's own client would resend each lost POST (up to 7 times) and create the run again;
    the writer's client sends a create once and looks for it by uid before sending it again."""
    p = proxy(fail_rate=0.3, seed=13)
    tracker = make_tracker([flat_replay({"gpu0": 100.0})], p.uri)
    try:
        energies = run_sweep(tracker, 10)
        assert tracker.flush(240)
    finally:
        tracker.close()
    lost_creates = p.count("/runs/create", "500")
    figure(capfd, f"proxy-500: {len(p.log)} requests, {p.count(what='500')} answered 500 after forwarding, "
                  f"{lost_creates} of them run creations")
    assert lost_creates >= 1, "the seed must lose the answer to at least one run creation"
    assert_arrived_once(mlflow_server.uri, energies)


@pytest.mark.slow
@pytest.mark.server
def test_sweep_through_a_proxy_with_2s_latency_delivers_everything(energy_home, mlflow_server, proxy, capfd):
    """Every answer 2 s late (the old /health check gave up after 2.0 s: nothing was ever written)."""
    p = proxy(latency_s=2.0)
    tracker = make_tracker([flat_replay({"gpu0": 100.0})], p.uri)
    t0 = time.monotonic()
    try:
        energies = run_sweep(tracker, 10, run_s=0.0)
        assert tracker.flush(400)
        took = time.monotonic() - t0
        status = tracker.writer_status()
        assert status.backend_ok and status.slow and status.state == "slow", status
    finally:
        tracker.close()
    figure(capfd, f"proxy-latency-2s: 10 runs delivered in {took:.0f} s, {len(p.log)} requests")
    assert_arrived_once(mlflow_server.uri, energies)


@pytest.mark.server
@pytest.mark.skipif(not backend_faults._is_root(), reason="filling a small tmpfs under the spool needs root")
def test_each_condition_is_reported_once_when_it_begins_and_once_when_it_ends(
        energy_home, mlflow_server, proxy, small_fs, monkeypatch):
    """MLflow out of reach, then the spool's disk full meanwhile: both are shown (the spool's used to
    be swallowed by the MLflow warning), each ends with one line, and so does a slow spell."""
    from ipython_energy.display import status_text

    fs = small_fs("spool-fs")
    monkeypatch.setenv("IPYTHON_ENERGY_HOME", str(fs.path / "home"))
    p = proxy()
    tracker = make_tracker([flat_replay({"gpu0": 100.0})], p.uri)
    said: list[str] = []

    def warned_until(condition, what: str) -> None:
        def check():
            warning = tracker.backend_warning()  # what the magic prints to stderr after each cell
            if warning:
                said.extend(warning.splitlines())
            return condition(tracker.writer_status())
        wait_until(check, timeout_s=60, poll_s=0.05, what=what)
        check()

    def a_run() -> None:
        tracker.end_run(tracker.start_run())

    try:
        a_run()
        assert tracker.flush(60) and tracker.backend_warning() is None
        p.down = True
        a_run()
        warned_until(lambda s: not s.backend_ok, "down")
        fs.fill()  # the journal's last page may still hold a few events: runs until one does not fit
        warned_until(lambda s: (a_run(), not s.spool_ok)[1], "spool failing")
        assert "NOT ANSWERING at " + p.uri in status_text(tracker)
        fs.free()
        a_run()
        warned_until(lambda s: s.spool_ok, "spool back")
        p.down = False
        warned_until(lambda s: s.backend_ok and s.pending == 0, "up")
        p.latency_s = 1.5
        for _ in range(2):
            a_run()
        warned_until(lambda s: s.slow, "slow")
        assert "writer: slow (" in status_text(tracker)
        p.latency_s = 0.0
        for _ in range(2):
            a_run()
        warned_until(lambda s: not s.slow and s.pending == 0, "prompt")
        assert tracker.flush(60)
    finally:
        tracker.close()
    uri = re.escape(p.uri)
    expected = [rf"ipython-energy: MLflow at {uri} is not answering \(.+\); measurements are kept in the local spool",
                r"ipython-energy: cannot write the local spool \(.*No space left on device.*\); measurements are "
                r"held in memory",
                r"ipython-energy: the local spool can be written again\.$",
                rf"ipython-energy: MLflow is answering again at {uri}; spooled measurements are being written\.$",
                rf"ipython-energy: MLflow at {uri} is slow \(\d\.\d s per request\)",
                rf"ipython-energy: MLflow at {uri} is answering promptly again\.$"]
    assert len(said) == len(expected) and all(re.match(e, line) for e, line in zip(expected, said)), said
