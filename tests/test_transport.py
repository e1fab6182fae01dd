"""The writer's transport to MLflow: slow told from down, a client that neither resends creations
behind the writer's back nor prints, and flat memory over a session.

Real parts: a real ``mlflow server`` process (tests/conftest.py), a real HTTP proxy in front of it
(tests/helpers/proxy.py) that adds latency or answers 500 after forwarding, MLflow's real sqlite
store.  No sensor is involved: the writer is handed events.
"""

from __future__ import annotations

import gc
import re
import time
import tracemalloc

import pytest
from mlflow.tracking import MlflowClient

from ipython_energy.events import Metrics, RunEnd, RunStart
from ipython_energy.spool import Spool
from ipython_energy.writer import Writer
from tests.helpers.waiting import wait_until


def _t() -> int:
    return int(time.time() * 1000)


def one_run(uri: str, uid: str, experiment: str = "exp", energy: float = 5.0) -> list:
    return [RunStart(uid, f"run-{uid}", _t(), uri, experiment, params={"uid": uid}),
            Metrics(uid, (("cell_energy_j", energy, 3, _t()),)),
            RunEnd(uid, "FINISHED", _t(), (("energy_j", energy, 0, _t()),))]


def runs_with_uid(uri: str, uid: str, experiment: str = "exp") -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`energy.uid` = '{uid}'")


@pytest.mark.server
def test_server_slower_than_the_old_health_timeout_is_slow_not_down_and_is_written_to(
        energy_home, mlflow_server, proxy):
    """2.5 s per answer; the old /health check (2.0 s) never passed and said NOT ANSWERING."""
    p = proxy(latency_s=2.5)
    p.fail_path, p.fail_next = "/runs/create", 1  # an answer lost: the writer then checks /health first
    writer = Writer(Spool.create("slow"))
    for event in one_run(p.uri, "u1"):
        writer.submit(event)
    states = []

    def delivered() -> bool:
        states.append(writer.status().state)
        return writer.flush(0)

    wait_until(delivered, timeout_s=150, poll_s=0.2, what="the run written through a slow server")
    assert p.count("/health") >= 1, "the health check ran (after the lost answer) and passed"
    assert "not answering" not in states, states
    status = writer.status()
    assert status.state == "slow" and status.backend_ok and re.match(r"\d+\.\d s per request", status.slow_detail)
    (run,) = runs_with_uid(mlflow_server.uri, "u1")
    assert run.info.status == "FINISHED" and run.data.metrics["energy_j"] == 5.0
    writer.close()


@pytest.mark.server
def test_writer_prints_nothing_and_creates_once_while_the_users_mlflow_keeps_its_behaviour(
        energy_home, mlflow_server, proxy, capfd, monkeypatch):
    import mlflow

    p = proxy()
    writer = Writer(Spool.create("quiet"))
    p.fail_path, p.fail_next = "/runs/create", 1  # the server creates the run; its answer is lost
    for event in one_run(p.uri, "w1"):
        writer.submit(event)
    assert writer.flush(60)
    assert len(runs_with_uid(mlflow_server.uri, "w1")) == 1, "the writer created its run once"
    assert p.count("/runs/create") == 1, "the writer's client did not resend the creation"
    out = capfd.readouterr().out
    assert "View run" not in out and "View experiment" not in out, out
    assert p.count("/runs/get") == 0, "no get_run per ended run for a link nobody sees"

    # The user's own MLflow in the same process, while the writer's client exists: as before.
    client = MlflowClient(p.uri)
    experiment_id = client.create_experiment("user-exp")
    p.fail_path, p.fail_next = "/experiments/get-by-name", 1
    assert client.get_experiment_by_name("user-exp").experiment_id == experiment_id
    assert p.count("/experiments/get-by-name", "500") == 1 and p.count("/experiments/get-by-name", "200") == 1, \
        "MLflow's own client retried the failed request, as it is configured to"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", p.uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name="users-own"):
        mlflow.log_param("a", 1)
    assert "🏃 View run users-own at: " + p.uri in capfd.readouterr().out
    writer.close()


@pytest.mark.slow
def test_memory_of_the_write_side_stays_flat_over_many_runs(energy_home, sqlite_uri):
    """Each run used to leave its start event and its run id behind for the rest of the session."""
    writer = Writer(None, adopt_orphans=False)  # no spool: the test measures what stays in memory
    here = [tracemalloc.Filter(True, "*/ipython_energy/*"), tracemalloc.Filter(True, __file__)]

    def runs(first: int, n: int) -> None:
        for i in range(first, first + n):
            writer.submit(RunStart(f"r{i}", f"run {i}", _t(), sqlite_uri, "exp", params={"i": str(i)}))
            writer.submit(RunEnd(f"r{i}", "FINISHED", _t(), (("energy_j", 1.0, 0, _t()),)))
        assert writer.flush(600)
        gc.collect()

    tracemalloc.start()
    try:
        # The store opened, MLflow's caches and the writer's window of recently ended runs full;
        # runs queued faster than MLflow takes them go as backlogs of up to 32 (writer.py).
        runs(0, 160)
        before = tracemalloc.take_snapshot()
        n = 240
        runs(80, n)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    kept = sum(d.size_diff for d in after.filter_traces(here).compare_to(before.filter_traces(here), "filename"))
    assert kept / n < 100, f"each run leaves {kept / n:.0f} B behind in the writer"
    assert writer.applied == 2 * (160 + n)
    writer.close()
