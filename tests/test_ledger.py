"""One sweep's ledger written by several processes that share no disk, as on several machines.

Each worker is a fresh interpreter with its own ``IPYTHON_ENERGY_HOME`` (no shared lock
directory) and, where this machine allows it (root and ``unshare --uts``), its own hostname; all
write through a real ``mlflow server`` backed by a real PostgreSQL.  Only the energies are made
up (events handed to the real writer): nothing is faked above the hardware seam.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ipython_energy.events import RunEnd, RunStart, SweepEnd, SweepStart
from ipython_energy.spool import Spool
from ipython_energy.writer import Writer
from tests.helpers.mlflow_readback import (assert_one_total_per_step, assert_sweep_total_exact, history, runs,
                                           split_sweep, sweep_energy)

ROOT = Path(__file__).resolve().parents[1]
RUNS_EACH = 8

# argv: uri, worker name, barrier time (epoch s), done dir, number of workers
WORKER = r"""
import os, sys, time
from pathlib import Path
from ipython_energy.events import RunEnd, RunStart, SweepEnd, SweepStart
from ipython_energy.spool import Spool
from ipython_energy.writer import Writer

uri, name, barrier, done, workers = sys.argv[1], sys.argv[2], float(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
runs_each, p = int(sys.argv[6]), int(sys.argv[7])
writer = Writer(Spool.create(name))
time.sleep(max(barrier - time.time(), 0))  # every worker joins the sweep at the same instant
t = lambda: int(time.time() * 1000)
sweep = f"{name}-sweep"
writer.submit(SweepStart(sweep, "shared", t(), uri, "exp", session=name))
for i in range(runs_each):
    uid = f"{name}-r{i}"
    energy = 1.0 + p + i / 8
    writer.submit(RunStart(uid, uid, t(), uri, "exp", sweep_uid=sweep, params={"i": str(i)},
                           tags={"energy.session": name}))
    writer.submit(RunEnd(uid, "FINISHED", t(), (("energy_j", energy, 0, t()), ("sweep_share_energy_j", energy, 0, t()),
                                             ("sweep_gap_before_energy_j", 0.25, 0, t()))))
assert writer.flush(300), "runs not written"
(done / name).touch()
while len(list(done.iterdir())) < workers:  # the sweep ends once every worker's runs are in
    time.sleep(0.1)
writer.submit(SweepEnd(sweep, "FINISHED", t(), between_j=0.5 + p))
assert writer.flush(300), "sweep end not written"
writer.close()
print("WORKER DONE", name, flush=True)
"""


def _can_set_hostname() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--uts", "hostname", "ledger-probe"], capture_output=True).returncode == 0


def _start_worker(tmp_path: Path, uri: str, name: str, barrier: float, done: Path, workers: int, p: int,
                  own_host: bool) -> subprocess.Popen:
    home = tmp_path / f"home-{name}"  # its own journal and locks, as on another machine
    env = {**os.environ, "IPYTHON_ENERGY_HOME": str(home), "PYTHONPATH": str(ROOT),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-c", WORKER, uri, name, str(barrier), str(done), str(workers), str(RUNS_EACH), str(p)]
    if own_host:
        cmd = ["unshare", "--uts", "sh", "-c", f'hostname "host-{name}" && exec "$@"', "sh", *cmd]
    return subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_on_separate_hosts_keep_one_ledger(tmp_path, mlflow_server_pg, workers):
    """Workers join one sweep at the same instant and write 8 runs each: one parent, run numbers
    1..N once each, one total per step, the totals equal to the children's sums, and the
    sweep's host and process counts (on a08c2b1's host lock, numbers repeated: 1 2 3 3 4 6 …)."""
    uri = mlflow_server_pg.uri
    own_host = _can_set_hostname()
    done = tmp_path / "done"
    done.mkdir()
    barrier = time.time() + 8.0  # after every interpreter has imported the writer
    procs = [_start_worker(tmp_path, uri, f"w{p}", barrier, done, workers, p, own_host) for p in range(workers)]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert all("WORKER DONE" in out for out in outputs), "\n".join(o[-2000:] for o in outputs)

    client, found = runs(uri, "exp")
    sweeps, children = split_sweep(found)
    assert len(sweeps) == 1, [(s.info.run_id, s.info.start_time) for s in sweeps]
    (parent,) = sweeps
    assert len(children) == workers * RUNS_EACH
    assert sorted(int(c.data.tags["energy.run_index"]) for c in children) == list(range(1, len(children) + 1))
    assert_one_total_per_step(client, parent)
    assert_sweep_total_exact(client, parent, children)
    parent = client.get_run(parent.info.run_id)
    total, in_runs = sweep_energy(client, parent, children)
    assert parent.data.metrics["sweep_energy_j"] == total
    assert parent.data.metrics["sweep_runs_energy_j"] == in_runs == math.fsum(c.data.metrics["energy_j"]
                                                                              for c in children)
    assert parent.data.metrics["sweep_runs"] == len(children)
    assert parent.data.metrics["sweep_processes"] == workers
    assert parent.data.metrics["sweep_hosts"] == (workers if own_host else 1)
    assert parent.info.status == "FINISHED", "closed when its last member left"
    steps = [m.step for m in history(client, parent.info.run_id, "sweep_runs")]
    assert sorted(set(steps)) == list(range(1, len(children) + 1))


def test_run_numbers_claimed_at_once_by_many_writers_are_unique(mlflow_server_pg):
    """The claim itself (MlflowStore.claim_index) from 4 threads with their own clients, 10
    children each, at the same moments: numbers 1..40, each claimed once and found again."""
    from ipython_energy.store import MlflowStore

    uri = mlflow_server_pg.uri
    stores = [MlflowStore(uri, "exp") for _ in range(4)]
    parent = stores[0].client.create_run(stores[0].experiment_id, run_name="parent").info.run_id
    children = [[stores[0].client.create_run(stores[0].experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
                 for _ in range(10)] for _ in stores]
    got: dict[str, int] = {}
    go = threading.Barrier(len(stores))

    def claim(store, mine):
        go.wait()
        for run_id in mine:
            got[run_id] = store.claim_index(parent, run_id, in_doubt=False)

    threads = [threading.Thread(target=claim, args=(s, mine)) for s, mine in zip(stores, children)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(got.values()) == list(range(1, 41))
    fresh = MlflowStore(uri, "exp")
    again = {run_id: fresh.claim_index(parent, run_id, in_doubt=True) for run_id in got}
    assert again == got, "a retry finds its own claim"


def test_run_numbers_claimed_in_batches_at_once_by_many_writers_are_unique(mlflow_server_pg):
    """Batched claims (MlflowStore.claim_indexes, a backlog's) from 4 threads with their own
    clients, 2 batches of 5 children each, at the same moments: a batch that meets a number taken
    meanwhile is refused whole by MLflow and its children claim one by one; numbers 1..40, once each."""
    from ipython_energy.store import MlflowStore

    uri = mlflow_server_pg.uri
    stores = [MlflowStore(uri, "exp") for _ in range(4)]
    parent = stores[0].client.create_run(stores[0].experiment_id, run_name="parent").info.run_id
    children = [[stores[0].client.create_run(stores[0].experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
                 for _ in range(10)] for _ in stores]
    got: dict[str, int] = {}
    go = threading.Barrier(len(stores))

    def claim(store, mine):
        go.wait()
        for batch in (mine[:5], mine[5:]):
            got.update(zip(batch, store.claim_indexes(parent, batch)))

    threads = [threading.Thread(target=claim, args=(s, mine)) for s, mine in zip(stores, children)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(got.values()) == list(range(1, 41))
    params = stores[0].client.get_run(parent).data.params
    assert {int(k.rsplit(".", 1)[1]): v for k, v in params.items() if k.startswith("energy.index.")} == \
        {k: run_id for run_id, k in got.items()}


def test_a_batch_of_claims_meeting_a_taken_number_is_refused_whole(sqlite_uri):
    """Writer A's view of the claims is stale (B claimed 2 and 3 since A's last read): A's batch
    for 2, 3, 4 is refused by MLflow as a whole (no param of it written), and A's three children
    then get 4, 5, 6 in their order."""
    from ipython_energy.store import MlflowStore

    a, b = MlflowStore(sqlite_uri, "exp"), MlflowStore(sqlite_uri, "exp")
    parent = a.client.create_run(a.experiment_id, run_name="parent").info.run_id
    new = [a.client.create_run(a.experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id for _ in range(6)]
    assert a.claim_index(parent, new[0], in_doubt=False) == 1
    assert b.claim_indexes(parent, new[1:3]) == [2, 3]
    assert a.claim_indexes(parent, new[3:]) == [4, 5, 6]
    params = a.client.get_run(parent).data.params
    assert {k: v for k, v in params.items() if k.startswith("energy.index.")} == \
        {f"energy.index.{i + 1}": run_id for i, run_id in enumerate(new)}



def test_a_writer_behind_the_others_tries_the_next_numbers_before_reading_the_parent(sqlite_uri):
    """B claimed 2..10 since A's last read.  A tries 2, 3, … (each refused as taken) and reads
    the parent's claims again only after CLAIM_TRIES_BEFORE_READ refusals, not after each: its
    child gets 11 with one read of the parent, where a read after every refusal made nine."""
    from ipython_energy.store import CLAIM_TRIES_BEFORE_READ, MlflowStore

    a, b = MlflowStore(sqlite_uri, "exp"), MlflowStore(sqlite_uri, "exp")
    parent = a.client.create_run(a.experiment_id, run_name="parent").info.run_id
    new = [a.client.create_run(a.experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id for _ in range(11)]
    assert a.claim_index(parent, new[0], in_doubt=False) == 1
    assert b.claim_indexes(parent, new[1:10]) == list(range(2, 11))
    reads = []
    real_get_run = a.client.get_run
    a.client.get_run = lambda run_id: reads.append(run_id) or real_get_run(run_id)
    assert a.claim_index(parent, new[10], in_doubt=False) == 11
    assert reads == [parent] and CLAIM_TRIES_BEFORE_READ == 4, "one read after 4 refusals, then 11 at once"
    params = real_get_run(parent).data.params
    assert {k: v for k, v in params.items() if k.startswith("energy.index.")} == \
        {f"energy.index.{i + 1}": run_id for i, run_id in enumerate(new)}


def _t():
    return int(time.time() * 1000)


def test_a_stale_recount_does_not_replace_the_complete_total(energy_home, mlflow_server_pg, monkeypatch):
    """Writer B recounts the sweep from a view taken before A left it (without A's time after its
    last run) after A logged the complete total: MLflow's latest sweep_energy_j stays complete."""
    from ipython_energy.ledger import Ledger

    uri = mlflow_server_pg.uri
    a, b = Writer(Spool.create("a")), Writer(Spool.create("b"))
    for writer, name in ((a, "a"), (b, "b")):
        writer.submit(SweepStart(f"{name}-s", "stale", _t(), uri, "exp"))
        writer.submit(RunStart(f"{name}-r", f"{name}-r", _t(), uri, "exp", sweep_uid=f"{name}-s"))
        writer.submit(RunEnd(f"{name}-r", "FINISHED", _t(), (("energy_j", 2.0, 0, _t()),)))
        assert writer.flush(120)
    a.submit(SweepEnd("a-s", "FINISHED", _t(), between_j=3.0))
    assert a.flush(120)
    client, found = runs(uri, "exp")
    (parent,), _children = split_sweep(found)
    parent_id = parent.info.run_id
    assert client.get_run(parent_id).data.metrics["sweep_energy_j"] == 7.0

    (store,) = b.stores()
    store._sweeps.clear()  # B forgets what it logged: it recounts everything
    stale_read = Ledger.read_parent

    def without_after(self, run):
        stale_read(self, run)
        self.after = {}  # the view before A's tag landed

    monkeypatch.setattr(Ledger, "read_parent", without_after)
    store.update_sweep(parent_id)
    points = [(m.step, m.value) for m in history(client, parent_id, "sweep_energy_j")]
    assert (2, 4.0) in points and (2, 7.0) in points, points
    assert client.get_run(parent_id).data.metrics["sweep_energy_j"] == 7.0, "the complete total stays the latest"
    monkeypatch.undo()
    a.close()
    b.close()


def test_a_running_run_on_another_host_is_live_in_the_sweep_view(tmp_path, energy_home, mlflow_server_pg):
    """A run still open in another process (its own home) shows in the sweep's data, as the
    sidebar reads it, with its latest live_energy_j: through MLflow alone."""
    from ipython_energy.query import SourceReader

    uri = mlflow_server_pg.uri
    script = r"""
import sys, time
from ipython_energy.events import Metrics, RunStart, SweepStart
from ipython_energy.spool import Spool
from ipython_energy.writer import Writer
uri = sys.argv[1]
w = Writer(Spool.create("far"))
t = int(time.time() * 1000)
w.submit(SweepStart("far-s", "live", t, uri, "exp", session="far"))
w.submit(RunStart("far-r", "far-r", t, uri, "exp", sweep_uid="far-s", tags={"energy.session": "far"}))
w.submit(Metrics("far-r", (("live_energy_j", 427.0, 4, t + 4000), ("live_power_w", 100.0, 4, t + 4000))))
assert w.flush(120)
print("FLUSHED", flush=True)
"""
    env = {**os.environ, "IPYTHON_ENERGY_HOME": str(tmp_path / "far-home"), "PYTHONPATH": str(ROOT),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = subprocess.run([sys.executable, "-c", script, uri], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert "FLUSHED" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    client, found = runs(uri, "exp")
    (parent,), _ = split_sweep(found)
    data = SourceReader(uri).sweep_data("exp", parent.info.run_id)
    (row,) = data["runs"]
    assert row["live"] is True and row["energy_j"] == 427.0 and row["status"] == "running"
    assert data["totals"]["energy_j"] == 427.0
    assert data["totals"]["processes"] == 1 and data["totals"]["hosts"] == 1


def test_points_depend_only_on_the_ended_prefix():
    """The pure rule (ipython_energy.ledger): a step's figures come from the children numbered up
    to it once all of them ended; a later child, running or ended, changes none of them, and a
    member's after-time counts from its step on."""
    from ipython_energy.ledger import Child, Entry, points, prefix

    def ended(j, t, host="a", session="s1"):
        return Entry(Child(j, j, 0.5, False), t, host, session)

    claims = {1: "r1", 2: "r2", 3: "r3", 4: "r4"}
    early = {"r1": ended(1.0, 100), "r2": Entry(None, 150, "a", "s1"), "r3": ended(3.0, 120, "b", "s2")}
    late = {**early, "r4": ended(4.0, 90, "b", "s3")}
    few, more = points(prefix(claims, early), [], None, None), points(prefix(claims, late), [], None, None)
    assert [s.step for s in few] == [1, 2] and more[:2] == few, "run 2 (not counted) takes no step"
    assert few[1].t_ms == 150 and few[1].totals.energy_j == 1.0 + 3.0 + 2 * 0.5
    assert (more[2].hosts, more[2].processes) == (2, 3)
    assert prefix(claims, {"r2": early["r2"]}) == [], "run 1 still running holds back every step"
    with_after = points(prefix(claims, late), [(10.0, 2)], None, None)
    assert with_after[0] == more[0] and with_after[1].totals.energy_j == more[1].totals.energy_j + 10.0
