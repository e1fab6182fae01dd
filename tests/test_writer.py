"""The background writer against a real MLflow sqlite store and a real ``mlflow server`` process."""

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ipython_energy.events import Metrics, RunEnd, RunStart, SweepEnd, SweepStart
from ipython_energy.spool import Spool
from ipython_energy.writer import Writer


def _t():
    return int(time.time() * 1000)


def sweep_events(uri, sweep_uid, energies, experiment="exp"):
    events = [SweepStart(sweep_uid, "grid", _t(), uri, experiment, planned=len(energies) + 1, budget_j=25.0)]
    for i, energy in enumerate(energies):
        uid = f"{sweep_uid}-run{i}"
        events += [
            RunStart(uid, f"lr={i}", _t(), uri, experiment, sweep_uid=sweep_uid, params={"lr": str(i)}),
            Metrics(uid, (("cell_energy_j", energy / 2, 7, _t()), ("cell_energy_j", energy / 2, 8, _t() + 1))),
            RunEnd(uid, "FINISHED", _t(), (("energy_j", energy, 0, _t()),), {"energy.methods": "gpu0=replay"}),
        ]
    return events


def killed(writer, spool, *, acked=True):
    """Stop ``writer`` and leave on disk what a SIGKILL would have left: its journal, and its
    acknowledgements when ``acked`` (without them: a crash between an MLflow write and its ack)."""
    journal = spool.path.read_bytes()
    acks = spool.ack_path.read_bytes() if acked and spool.ack_path.exists() else None
    writer.close(timeout_s=0)
    spool.path.write_bytes(journal)
    if acks is not None:
        spool.ack_path.write_bytes(acks)
    else:
        spool.ack_path.unlink(missing_ok=True)


def runs_by_kind(uri, experiment="exp"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    sweeps = [r for r in runs if r.data.tags.get("energy.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("energy.kind") == "run"]
    return client, sweeps, children


def test_sweep_total_is_exact_sum_and_history_rises(energy_home, sqlite_uri):
    energies = [3.25, 7.5, 0.125, 11.0]
    writer = Writer(Spool.create("w1"))
    for ev in sweep_events(sqlite_uri, "sw", energies):
        writer.submit(ev)
    assert writer.flush(120)
    client, sweeps, children = runs_by_kind(sqlite_uri)
    assert len(sweeps) == 1 and len(children) == 4
    parent = sweeps[0]
    assert parent.data.metrics["sweep_energy_j"] == sum(energies)
    history = [(m.step, m.value) for m in client.get_metric_history(parent.info.run_id, "sweep_energy_j")]
    assert history == [(1, 3.25), (2, 10.75), (3, 10.875), (4, 21.875)]
    assert parent.data.tags["energy.budget_state"] == "ok"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.tags["energy.run_index"] for c in children) == ["1", "2", "3", "4"]
    assert all(c.data.tags["energy.host"] for c in children)
    writer.close()


def test_experiments_open_in_mlflows_training_runs_view(energy_home, sqlite_uri):
    """MLflow's UI opens an experiment without ``mlflow.experimentKind`` in its GenAI overview,
    where no run shows (a08c2b1 set no kind).  A new experiment gets the training kind; an
    existing one without a kind gets it too; a kind the user chose is left alone."""
    client = MlflowClient(sqlite_uri)
    client.create_experiment("old-no-kind")
    client.create_experiment("users-kind", tags={"mlflow.experimentKind": "genai_development"})
    writer = Writer(Spool.create("kinds"))
    for experiment in ("new", "old-no-kind", "users-kind"):
        writer.submit(RunStart(f"r-{experiment}", "r", _t(), sqlite_uri, experiment))
        writer.submit(RunEnd(f"r-{experiment}", "FINISHED", _t(), (("energy_j", 1.0, 0, _t()),)))
    assert writer.flush(120)
    writer.close()
    kinds = {name: client.get_experiment_by_name(name).tags.get("mlflow.experimentKind")
             for name in ("new", "old-no-kind", "users-kind")}
    assert kinds == {"new": "custom_model_development", "old-no-kind": "custom_model_development",
                     "users-kind": "genai_development"}


def test_budget_state_over(energy_home, sqlite_uri):
    writer = Writer(Spool.create("w2"))
    for ev in sweep_events(sqlite_uri, "sw", [20.0, 10.0]):
        writer.submit(ev)
    assert writer.flush(120)
    _, sweeps, _ = runs_by_kind(sqlite_uri)
    assert sweeps[0].data.tags["energy.budget_state"] == "over"


def test_unreachable_backend_spools_then_replays_once_in_next_kernel(energy_home, tmp_path, sqlite_uri):
    """A backend that never answers: everything stays in the spool; the next session writes it once."""
    dead = "http://127.0.0.1:9"  # discard port: connection refused at once
    spool = Spool.create("dead-session")
    first = Writer(spool, retry_max_s=0.2)
    events = sweep_events(dead, "sw", [1.0, 2.0])
    for ev in events:
        first.submit(ev)
    assert not first.flush(3)
    assert first.status().backend_ok is False
    assert first.status().pending == len(events)
    killed(first, spool)  # nothing reached MLflow, the journal holds all
    # The journal names the dead URI; point the recovery at the real store (same events otherwise).
    journal = (energy_home / "spool" / "dead-session.jsonl")
    journal.write_text(journal.read_text().replace(dead, sqlite_uri))
    second = Writer(Spool.create("next-session"))
    second.start()
    assert second.flush(120)
    _, sweeps, children = runs_by_kind(sqlite_uri)
    assert len(sweeps) == 1 and len(children) == 2
    assert sweeps[0].data.metrics["sweep_energy_j"] == 3.0
    assert not journal.exists()  # fully replayed and retired
    second.close()


def test_in_doubt_replay_does_not_duplicate(energy_home, sqlite_uri):
    """Events applied to MLflow but never acked (crash between the two) are not written twice."""
    spool = Spool.create("crashy")
    writer = Writer(spool)
    events = sweep_events(sqlite_uri, "sw", [4.0])
    for ev in events:
        writer.submit(ev)
    assert writer.flush(120)
    killed(writer, spool, acked=False)  # as if the kernel died before writing any ack
    again = Writer(Spool.create("after"))
    again.start()
    assert again.flush(120)
    client, sweeps, children = runs_by_kind(sqlite_uri)
    assert len(sweeps) == 1 and len(children) == 1
    cell_points = client.get_metric_history(children[0].info.run_id, "cell_energy_j")
    assert sorted(m.step for m in cell_points) == [7, 8]
    assert [m.value for m in client.get_metric_history(sweeps[0].info.run_id, "sweep_energy_j")] == [4.0]


def test_run_left_open_by_dead_kernel_is_closed_killed_with_last_live_energy(energy_home, sqlite_uri):
    spool = Spool.create("killed")
    writer = Writer(spool)
    t = _t()
    writer.submit(RunStart("open", "training", t, sqlite_uri, "exp"))
    writer.submit(Metrics("open", (("live_energy_j", 50.0, 2, t), ("live_power_w", 25.0, 2, t))))
    writer.submit(Metrics("open", (("live_energy_j", 100.0, 4, t + 2000), ("live_power_w", 25.0, 4, t + 2000))))
    assert writer.flush(120)
    killed(writer, spool)  # no run_end was ever written
    Writer(Spool.create("restarted")).flush(0)  # not started yet
    recovery = Writer(Spool.create("restarted2"))
    recovery.start()
    assert recovery.flush(120)
    client, _, children = runs_by_kind(sqlite_uri)
    (run,) = children
    assert run.info.status == "KILLED"
    assert run.data.metrics["energy_j"] == 100.0
    assert run.data.metrics["duration_s"] == 4
    assert "recovery" in run.data.tags["energy.closed_by"]


@pytest.mark.server
def test_server_killed_mid_sweep_and_restarted(energy_home, mlflow_server):
    """A real mlflow server SIGKILLed mid-sweep: nothing raises, and after restart all is there once."""
    uri = mlflow_server.uri
    writer = Writer(Spool.create("srv"), retry_max_s=0.5)
    events = sweep_events(uri, "sw", [1.0, 2.0, 3.0, 4.0])
    for ev in events[:5]:
        writer.submit(ev)
    assert writer.flush(120)
    mlflow_server.kill()
    t0 = time.perf_counter()
    for ev in events[5:]:
        writer.submit(ev)
    assert time.perf_counter() - t0 < 0.05  # submitting never waits on the backend
    assert not writer.flush(2)
    deadline = time.monotonic() + 15  # a call stuck in MLflow's own retries counts as an outage after 5 s
    while writer.status().backend_ok and time.monotonic() < deadline:
        time.sleep(0.5)
    assert writer.status().backend_ok is False
    mlflow_server.start()
    assert writer.flush(180)
    client, sweeps, children = runs_by_kind(uri)
    assert len(sweeps) == 1 and len(children) == 4
    assert sweeps[0].data.metrics["sweep_energy_j"] == 10.0
    for child in children:
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "cell_energy_j"))
        assert steps == [7, 8], child.info.run_name
    writer.close()


def test_refused_event_is_set_aside_and_does_not_block_the_rest(energy_home, sqlite_uri):
    """MLflow refusing one event (a param changed after it was logged) must not hold up later ones."""
    writer = Writer(Spool.create("poison"), retry_max_s=0.05)
    t = _t()
    writer.submit(RunStart("a", "a", t, sqlite_uri, "exp", params={"lr": "1"}))
    writer.submit(RunEnd("ghost", "FINISHED", t, (("energy_j", 1.0, 0, t),)))  # a run that never existed
    writer.submit(RunEnd("a", "FINISHED", t, (("energy_j", 2.0, 0, t),)))
    assert writer.flush(120)
    _, _, (run,) = runs_by_kind(sqlite_uri)
    assert run.data.metrics["energy_j"] == 2.0 and run.info.status == "FINISHED"
    assert [ev.uid for ev, _ in writer.rejected] == ["ghost"]
    rejected = energy_home / "spool" / "rejected" / "poison.jsonl"
    assert '"uid":"ghost"' in rejected.read_text()
    writer.close()
    # The next kernels' recovery passes replay dead sessions' journals and retire them; what a person
    # was told to look at is not one of those (it was taken for one, emptied and deleted, on 40d1a1c).
    for session in ("next-1", "next-2"):
        later = Writer(Spool.create(session))
        later.start()
        assert later.flush(120)
        later.close()
    assert '"uid":"ghost"' in rejected.read_text()
    _, _, (run,) = runs_by_kind(sqlite_uri)  # and nothing in it was replayed


@pytest.mark.parametrize("joiner", ["another kernel", "the creator restarted"])
def test_kernel_killed_in_a_joined_sweep_is_closed_and_counted_by_the_next(energy_home, sqlite_uri, joiner):
    """Kernel A starts sweep ``s`` and runs once (100 J); kernel B joins ``s`` with its own sweep
    uid and is SIGKILLed mid-run (last live flush: 427 J); kernel C loads.  B's link to the
    sweep's parent was only in B's memory (on a08c2b1 C set B's run end aside as ``LookupError``
    and left the run RUNNING).  It is found again by experiment and sweep name, so C closes B's
    run KILLED with 427 J, the total counts it, and the parent is closed once no member is left.
    With "the creator restarted", A itself is killed first and B is its restarted kernel."""
    t = _t()
    a_spool = Spool.create("kernel-a")
    a = Writer(a_spool)
    a.submit(SweepStart("a-s", "s", t, sqlite_uri, "exp"))
    for ev in _one_run(sqlite_uri, "a-s", "a-r1", 100.0):
        a.submit(ev)
    assert a.flush(120)
    if joiner == "the creator restarted":
        killed(a, a_spool)
    b_spool = Spool.create("kernel-b")
    b = Writer(b_spool)
    b.submit(SweepStart("b-s", "s", t + 10, sqlite_uri, "exp"))
    b.submit(RunStart("b-r1", "lr=2", t + 20, sqlite_uri, "exp", sweep_uid="b-s"))
    b.submit(Metrics("b-r1", (("live_energy_j", 427.0, 4, t + 4000), ("live_power_w", 100.0, 4, t + 4000))))
    assert b.flush(120)
    killed(b, b_spool)
    if joiner == "another kernel":
        a.submit(SweepEnd("a-s", "FINISHED", _t()))
        assert a.flush(120)
        a.close()
        client, (parent,), _ = runs_by_kind(sqlite_uri)
        assert parent.info.status == "RUNNING", "B has not left the sweep: its parent stays open"
    c = Writer(Spool.create("kernel-c"))
    c.start()
    assert c.flush(120)
    client, sweeps, children = runs_by_kind(sqlite_uri)
    assert len(sweeps) == 1 and len(children) == 2
    (b_run,) = [r for r in children if r.data.tags["energy.uid"] == "b-r1"]
    assert b_run.info.status == "KILLED" and b_run.data.metrics["energy_j"] == 427.0
    assert b_run.data.tags["mlflow.parentRunId"] == sweeps[0].info.run_id
    history = client.get_metric_history(sweeps[0].info.run_id, "sweep_energy_j")
    assert max(history, key=lambda m: m.step).value == 527.0
    expected = "FINISHED" if joiner == "another kernel" else "KILLED"
    assert sweeps[0].info.status == expected, "closed when its last member left"
    assert not any(energy_home.glob("spool/rejected/*.jsonl")), "nothing was set aside"
    c.close()


def _one_run(uri, sweep_uid, uid, energy):
    return [RunStart(uid, uid, _t(), uri, "exp", sweep_uid=sweep_uid),
            RunEnd(uid, "FINISHED", _t(), (("energy_j", energy, 0, _t()),))]


def test_sweep_bookkeeping_is_incremental_and_sees_another_writer(energy_home, sqlite_uri, monkeypatch):
    """A run costs no listing of the sweep's children, yet runs of a second writer are counted:
    the ledger reads the parent's claims and looks up only the children it has not seen end."""
    w1, w2 = Writer(Spool.create("w1")), Writer(Spool.create("w2"))
    w1.submit(SweepStart("s1", "shared", _t(), sqlite_uri, "exp"))
    w2.submit(SweepStart("s2", "shared", _t(), sqlite_uri, "exp"))  # joins the RUNNING parent of the same name
    expected = []
    for i, (writer, sweep_uid) in enumerate([(w1, "s1"), (w2, "s2"), (w1, "s1"), (w2, "s2")]):
        for ev in _one_run(sqlite_uri, sweep_uid, f"r{i}", 1.5 + i):
            writer.submit(ev)
        assert writer.flush(120)
        expected.append((i + 1, math.fsum(1.5 + k for k in range(i + 1))))
    (store,) = w1.stores()
    listings = []
    original = store.children
    monkeypatch.setattr(store, "children", lambda parent: listings.append(parent) or original(parent))
    for i in range(4, 10):
        for ev in _one_run(sqlite_uri, "s1", f"r{i}", 1.5 + i):
            w1.submit(ev)
        assert w1.flush(120)
        expected.append((i + 1, math.fsum(1.5 + k for k in range(i + 1))))
    assert listings == [], "no listing of the children"
    client, sweeps, children = runs_by_kind(sqlite_uri)
    assert len(sweeps) == 1 and len(children) == 10
    history = sorted((m.step, m.value) for m in client.get_metric_history(sweeps[0].info.run_id, "sweep_energy_j"))
    assert history == expected
    assert sorted(int(c.data.tags["energy.run_index"]) for c in children) == list(range(1, 11))
    w1.close()
    w2.close()


def test_two_writers_racing_on_one_sweep_end_with_the_complete_total(energy_home, sqlite_uri):
    """Runs of two writers end at the same moments; the last total counts them all, once each."""
    import threading

    writers = [Writer(Spool.create("w1")), Writer(Spool.create("w2"))]
    for writer, uid in zip(writers, ("s1", "s2")):
        writer.submit(SweepStart(uid, "race", _t(), sqlite_uri, "exp"))
        assert writer.flush(120)

    def produce(writer, sweep_uid, tag):
        for i in range(8):
            for ev in _one_run(sqlite_uri, sweep_uid, f"{tag}{i}", 1.0 + i / 8 + (tag == "b")):
                writer.submit(ev)
            time.sleep(0.01)
        assert writer.flush(120)

    threads = [threading.Thread(target=produce, args=(w, s, t)) for w, s, t in zip(writers, ("s1", "s2"), "ab")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    client, sweeps, children = runs_by_kind(sqlite_uri)
    assert len(sweeps) == 1 and len(children) == 16
    last = max(client.get_metric_history(sweeps[0].info.run_id, "sweep_energy_j"), key=lambda m: (m.step, m.timestamp))
    assert last.step == 16
    assert last.value == math.fsum(c.data.metrics["energy_j"] for c in children)
    assert sorted(int(c.data.tags["energy.run_index"]) for c in children) == list(range(1, 17))
    for writer in writers:
        writer.close()


# Fresh interpreters (MLflow must not be imported yet).  The user's thread starts `import mlflow`
# and the writer's first import (mlflow_client_class, what MlflowStore calls) starts while it runs.
IMPORT_RACE = r"""
import sys, threading, time
from ipython_energy.transport import mlflow_client_class
errors = []
def writer_side():
    time.sleep(float(sys.argv[1]))
    try:
        mlflow_client_class()
    except Exception as exc:
        errors.append(repr(exc))
th = threading.Thread(target=writer_side)
th.start()
try:
    import mlflow
    from mlflow.tracking import MlflowClient
    print("USER ok")
except Exception as exc:
    print("USER failed", repr(exc)[:300])
th.join()
print("WRITER", "ok" if not errors else errors)
"""

# The same in a real IPython shell, as a notebook with autolog on runs it: the cell's begin event
# wakes the writer, whose first MLflow import may overlap the cell's own `import mlflow` (timing decides;
# the check above forces the overlap). The cell must run, and its measurement reach MLflow.
AUTOLOG_IMPORT = r"""
import sys
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
ip.run_cell("%load_ext ipython_energy")
ip.run_cell("%energy autolog on")
r = ip.run_cell("import mlflow")
print("USER-CELL", "failed" if r.error_in_exec is not None else "ok", repr(r.error_in_exec)[:300])
ip.run_cell("%energy flush")
from mlflow.tracking import MlflowClient
client = MlflowClient(sys.argv[1])
print("RUNS", len(client.search_runs([e.experiment_id for e in client.search_experiments()])))
"""


def _fresh_python(script, *args, cwd, **env_extra):
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "MLFLOW_DISABLE_TELEMETRY": "true", **env_extra}
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=180)
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("writer_delay_s", [0.02, 0.05, 0.1])
def test_users_import_mlflow_is_not_broken_by_the_writers_first_import(tmp_path, writer_delay_s):
    # `from mlflow.tracking import ...` first (as the writer did) takes that submodule's import lock
    # and then waits for the package, which the user's thread is initializing and which next needs
    # that submodule: Python breaks the cycle by handing the user a partially initialized module,
    # an ImportError in the user's cell (every time, at each of these delays).
    out = _fresh_python(IMPORT_RACE, str(writer_delay_s), cwd=tmp_path)
    assert "USER ok" in out and "WRITER ok" in out, out[-3000:]


def test_autolog_cell_that_imports_mlflow_runs_and_is_logged(tmp_path, sqlite_uri, energy_home):
    out = _fresh_python(AUTOLOG_IMPORT, sqlite_uri, cwd=tmp_path, IPYTHON_ENERGY_TRACKING_URI=sqlite_uri)
    assert "USER-CELL ok" in out, out[-3000:]
    assert int(out.split("RUNS ")[1].split()[0]) >= 1, out[-3000:]


def _backlog(uri, sweep_uid, n):
    """A sweep's start, then ``n`` whole runs of it (start, a cell's metrics, end): what an outage leaves queued."""
    events = sweep_events(uri, sweep_uid, [1.0 + i / 8 for i in range(n)])
    return events[:1], events[1:]


def _check_each_run_once(uri, n):
    """MLflow holds ``n`` children, each once, FINISHED with its params and its metric points once,
    numbered 1..n, and the sweep's last total their sum."""
    client, sweeps, children = runs_by_kind(uri)
    assert len(sweeps) == 1 and len(children) == n
    assert len({c.data.tags["energy.uid"] for c in children}) == n
    assert sorted(int(c.data.tags["energy.run_index"]) for c in children) == list(range(1, n + 1))
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["lr"] == child.data.tags["energy.uid"].rsplit("run", 1)[1]
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "cell_energy_j"))
        assert steps == [7, 8], child.info.run_name
        assert len(client.get_metric_history(child.info.run_id, "energy_j")) == 1
    parent = sweeps[0]
    assert {k: v for k, v in parent.data.params.items() if k.startswith("energy.index.")} == \
        {f"energy.index.{c.data.tags['energy.run_index']}": c.info.run_id for c in children}
    assert parent.data.metrics["sweep_energy_j"] == math.fsum(c.data.metrics["energy_j"] for c in children)


@pytest.mark.server
def test_backlog_after_outage_costs_three_requests_a_run(energy_home, proxy):
    """Runs queued while the server is out of reach go to it, once it answers, as a backlog:
    each run's create, one batch (params, tags, metrics of its start and end) and its end;
    the run numbers of several runs in one batch of params on the parent.  Nothing else per run."""
    server = proxy()
    sweep, runs = _backlog(server.uri, "bl", 12)
    writer = Writer(Spool.create("backlog"), retry_max_s=0.2)
    for ev in sweep:
        writer.submit(ev)
    assert writer.flush(120)
    server.down = True
    for ev in runs:
        writer.submit(ev)
    assert not writer.flush(1)
    server.log.clear()
    server.down = False
    assert writer.flush(180)
    _check_each_run_once(server.uri, 12)
    assert server.count("/runs/create", "200") == 12
    assert server.count("/runs/update", "200") == 12
    # One batch a run, one for the claims of the runs queued whole, one for the sweep's totals;
    # the first run may have been tried (and failed) alone while its end was not queued yet: it
    # is then applied event by event, in doubt (its claim a param of its own, two batches more).
    assert 12 + 2 <= server.count("/runs/log-batch", "200") <= 12 + 2 + 2
    assert server.count("/runs/log-parameter") <= 1
    writer.close()


@pytest.mark.server
def test_backlog_through_failing_answers_loses_nothing_and_writes_each_run_once(energy_home, proxy):
    """A backlog drained through a proxy that answers a quarter of the requests with HTTP 500
    after the server committed them, and drops some connections: requests of several runs in
    flight at once fail part-way, the runs are applied again one by one, in doubt, and MLflow
    ends with every run once, numbered 1..n, every point once, and the total their sum."""
    server = proxy(fail_rate=0.25, drop_rate=0.05, seed=7)
    sweep, runs = _backlog(server.uri, "flaky", 16)
    writer = Writer(Spool.create("flaky"), retry_max_s=0.2)
    server.down = True
    for ev in sweep + runs:
        writer.submit(ev)
    assert not writer.flush(1)
    server.down = False
    assert writer.flush(300)
    _check_each_run_once(server.uri, 16)
    assert not writer.rejected
    writer.close()


@pytest.mark.server
def test_backlog_cut_off_mid_drain_then_kernel_killed_is_replayed_once(energy_home, proxy):
    """The server goes out of reach while a backlog is being written (some runs created, claimed or
    ended, none acknowledged), and the kernel dies: the next kernel replays the journal, and
    every run is in MLflow once, with its number, its points once, and the sweep's total."""
    server = proxy()
    sweep, runs = _backlog(server.uri, "cut", 16)
    spool = Spool.create("cut")
    writer = Writer(spool, retry_max_s=0.2)
    for ev in sweep:
        writer.submit(ev)
    assert writer.flush(120)
    server.down = True
    for ev in runs:
        writer.submit(ev)
    assert not writer.flush(1)
    server.log.clear()
    server.down = False
    deadline = time.monotonic() + 120
    while server.count("/runs/update", "200") < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    server.down = True
    assert server.count("/runs/update", "200") >= 3
    killed(writer, spool, acked=False)
    server.down = False
    again = Writer(Spool.create("after-cut"))
    again.start()
    assert again.flush(300)
    _check_each_run_once(server.uri, 16)
    again.close()


@pytest.mark.server
def test_backlog_cut_off_mid_drain_resumes_where_it_stopped(energy_home, proxy):
    """The server goes out of reach for a moment while a backlog is being written: the writer
    tries the backlog again when it answers, and goes on from where it stopped (runs created are
    not looked for, only creations whose answer was lost): every run once, numbers 1..16."""
    server = proxy()
    sweep, runs = _backlog(server.uri, "resume", 16)
    writer = Writer(Spool.create("resume"), retry_max_s=0.2)
    for ev in sweep:
        writer.submit(ev)
    assert writer.flush(120)
    server.down = True
    for ev in runs:
        writer.submit(ev)
    assert not writer.flush(1)
    server.log.clear()
    server.down = False
    deadline = time.monotonic() + 120
    while server.count("/runs/update", "200") < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    server.down = True
    time.sleep(1)
    server.down = False
    assert writer.flush(300)
    _check_each_run_once(server.uri, 16)
    assert server.count("/runs/create", "200") == 16
    # Lookups by energy.uid: the first run's (tried alone while down) and the creations cut off.
    assert server.count("/runs/search", "200") <= 1 + 6 + 2
    writer.close()


@pytest.mark.server
def test_a_backlog_whose_totals_fail_after_it_is_written_is_not_written_again(energy_home, proxy, monkeypatch):
    """Every run of a backlog reaches MLflow, then logging the sweep's totals fails once (the
    server gone again just then): the backlog is tried again, and creates no run twice (it
    made 8 of 400 trials two finished runs each in a 4 x 100 run of bench/sweep_scale.py)."""
    from ipython_energy.store import MlflowStore

    server = proxy()
    sweep, runs = _backlog(server.uri, "totals", 8)
    writer = Writer(Spool.create("totals"), retry_max_s=0.2)
    for ev in sweep:
        writer.submit(ev)
    assert writer.flush(120)
    real, failed = MlflowStore.settle, []

    def settle_failing_once(store):
        if not failed:
            failed.append(True)
            raise ConnectionError("no answer: the server went away just then")
        return real(store)

    monkeypatch.setattr(MlflowStore, "settle", settle_failing_once)
    server.down = True
    for ev in runs:
        writer.submit(ev)
    assert not writer.flush(1)
    server.log.clear()
    server.down = False
    assert writer.flush(300)
    assert failed, "the totals failed once after the backlog was written"
    _check_each_run_once(server.uri, 8)
    assert server.count("/runs/create", "200") == 8
    writer.close()
