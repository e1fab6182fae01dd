"""Backend faults, through the real magic in a real IPython shell: the MLflow backend killed, a
sqlite store locked by another process, a full disk, a read-only working directory.

Hardware seam: the replay sensor plays a flat trace (gpu0 100 W, cpu 20 W).  MLflow is real: a
sqlite store, or a real ``mlflow server`` process (tests/conftest.py MlflowServer) that is killed
with SIGKILL and restarted.

Every test asserts the outcome: cells ran and were not slowed, the user saw exactly one clear
warning (Tracker.backend_warning, printed to stderr after a cell) instead of one per cell, and
once the fault cleared every run and every per-cell metric reached MLflow exactly once, with the
sweep's total the exact sum of its children.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import ipython_energy
from faultkit import (RECOVERY_NOTE, SLOW_END_NOTE, SPOOL_RECOVERY_NOTE, assert_one_total_per_step,
                      assert_sweep_total_exact, figure, log_noise, median, mlflow_runs, outage_warnings,
                      slow_warnings, split_sweep)


def replay_env(flat_trace, uri: str | None) -> dict[str, str]:
    env = {"IPYTHON_ENERGY_SENSORS": f"replay:{flat_trace}", "IPYTHON_ENERGY_QUIET": "true"}
    if uri is not None:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


class Sweep:
    """Drives ``%%energy --param i=N`` cells in one sweep and remembers what each cell measured."""

    def __init__(self, ip, name: str):
        self.ip = ip
        self.name = name
        self.cells: dict[str, tuple[int, object]] = {}  # run name -> (execution count, Measurement)
        ip.run_line_magic("energy", f"sweep {name}")

    def cell(self, body: str = "pass") -> float:
        """Run one measured cell as a new run of the sweep; return its wall time in seconds."""
        i = len(self.cells)
        count = self.ip.execution_count
        t0 = time.perf_counter()
        result = self.ip.run_cell(f"%%energy -o m --param i={i}\n{body}")
        elapsed = time.perf_counter() - t0
        assert result.success, result.error_in_exec
        self.cells[f"i={i}"] = (count, self.ip.user_ns["m"])
        return elapsed

    def plain(self) -> float:
        t0 = time.perf_counter()
        assert self.ip.run_cell("pass").success
        return time.perf_counter() - t0

    def check_arrived_once(self, uri: str) -> None:
        """Every run once, every per-cell point once with its own value, the sweep total exact."""
        client, runs = mlflow_runs(uri)
        sweeps, children = split_sweep(runs)
        (parent,) = [s for s in sweeps if s.info.run_name == self.name]
        children = [c for c in children if c.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        names = [c.info.run_name for c in children]
        assert sorted(names) == sorted(self.cells), "each run exactly once"
        for child in children:
            count, m = self.cells[child.info.run_name]
            assert child.info.status == "FINISHED"
            assert child.data.metrics["energy_j"] == m.energy_j
            points = client.get_metric_history(child.info.run_id, "cell_energy_j")
            assert [(p.step, p.value) for p in points] == [(count, m.energy_j)], child.info.run_name
            assert len(client.get_metric_history(child.info.run_id, "energy_j")) == 1
        assert_sweep_total_exact(client, parent, children)
        assert_one_total_per_step(client, parent)


# ---- a real mlflow server, SIGKILLed mid-sweep and restarted 30 s later --------------------------

@pytest.mark.slow
@pytest.mark.server
def test_server_sigkilled_mid_sweep_and_restarted_30s_later(open_shell, flat_trace, mlflow_server, capfd, caplog):
    ip = open_shell(env=replay_env(flat_trace, mlflow_server.uri))
    sweep = Sweep(ip, "outage")
    for _ in range(5):
        sweep.cell("import time\ntime.sleep(0.05)")
    assert ipython_energy.flush(120)
    capfd.readouterr()

    mlflow_server.kill()
    killed_at = time.monotonic()
    magic_s, plain_s = [], []
    while time.monotonic() - killed_at < 30.0:  # the backend stays down for 30 s
        magic_s.append(sweep.cell())
        plain_s.append(sweep.plain())
        time.sleep(0.25)
    during = capfd.readouterr().err
    mlflow_server.start()
    restarted_at = time.monotonic()
    for _ in range(3):  # cells after the restart, the last ones of the sweep
        sweep.cell("import time\ntime.sleep(0.05)")
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(300)
    caught_up_s = time.monotonic() - restarted_at
    assert ip.run_cell("%%energy --no-log\npass").success  # the next cell tells the user it is over
    after = capfd.readouterr().err
    assert log_noise(caplog) == []  # nothing else reached the user through logging

    added_ms = sorted((m - p) * 1e3 for m, p in zip(magic_s, plain_s))
    p50 = median(added_ms)
    p95 = added_ms[int(0.95 * (len(added_ms) - 1))]
    figure(capfd, f"server-outage: {len(magic_s)} cells while down; added wall time per cell "
          f"p50 {p50:.2f} ms, p95 {p95:.2f} ms, max {added_ms[-1]:.1f} ms; MLflow had all "
                  f"{len(sweep.cells)} runs {caught_up_s:.0f} s after the restart")
    assert p50 < 5.0 and p95 < 50.0
    assert len(outage_warnings(during)) == 1, during  # one warning for the whole outage
    assert "not answering" in outage_warnings(during)[0]
    assert len(outage_warnings(after)) == 0 and after.count(RECOVERY_NOTE) == 1, after
    sweep.check_arrived_once(mlflow_server.uri)


# ---- a sqlite store locked by another process --------------------------------------------------------

LOCKER = textwrap.dedent("""
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    print("LOCKED", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
""")


@pytest.mark.slow
def test_sqlite_store_locked_by_another_process(open_shell, flat_trace, sqlite_uri, tmp_path, capfd, caplog):
    ip = open_shell(env=replay_env(flat_trace, sqlite_uri))
    sweep = Sweep(ip, "locked")
    sweep.cell()
    assert ipython_energy.flush(120)
    capfd.readouterr()
    db = sqlite_uri[len("sqlite:///"):]
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, db, "12"], stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "LOCKED"
        locked_at = time.monotonic()
        cell_s = []
        while time.monotonic() - locked_at < 11.0:
            cell_s.append(sweep.cell())
            time.sleep(0.3)
        during = capfd.readouterr().err
        assert not ipython_energy.flush(0.5)  # nothing could be written while the lock was held
    finally:
        locker.wait(30)
    sweep.cell()
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(180)
    assert ip.run_cell("%%energy --no-log\npass").success  # the next cell tells the user it is over
    after = capfd.readouterr().err
    assert log_noise(caplog) == []  # nothing else reached the user through logging
    figure(capfd, f"sqlite-locked: {len(cell_s)} cells while locked; cell wall time p50 "
          f"{median(cell_s) * 1e3:.2f} ms, max {max(cell_s) * 1e3:.1f} ms")
    assert max(cell_s) < 0.5, "a cell waited on the locked store"
    # A store held locked answers once the lock goes: the writer calls it slow (or, if a request
    # fails outright, not answering), once, and says once that it is over.
    warnings = outage_warnings(during) + slow_warnings(during)
    assert len(warnings) == 1, during
    assert "database is locked" in warnings[0] or "no answer for" in warnings[0]
    assert after.count(RECOVERY_NOTE) + after.count(SLOW_END_NOTE) == 1, after
    assert not outage_warnings(after) and not slow_warnings(after)
    sweep.check_arrived_once(sqlite_uri)


# ---- a full disk ----------------------------------------------------------------------------------

def _is_root() -> bool:
    return os.geteuid() == 0


class SmallFs:
    """A small tmpfs the test mounts (root only), and a filler file that takes all its free space."""

    def __init__(self, path: Path, size: str, options: str = ""):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        opts = f"size={size}" + (f",{options}" if options else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        self.filler = path / "filler"

    def fill(self) -> None:
        """Take every free byte; afterwards a write of one more page fails with ENOSPC."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 16, 512, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == 28, exc
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_fs(tmp_path):
    mounted = []

    def make(name: str, size: str = "16m", options: str = "") -> SmallFs:
        fs = SmallFs(tmp_path / name, size, options)
        mounted.append(fs)
        return fs

    yield make
    for fs in mounted:
        fs.unmount()


@pytest.mark.skipif(not _is_root(), reason="mounting a small tmpfs to fill needs root")
@pytest.mark.parametrize("where", ["spool", "store", pytest.param("both", marks=pytest.mark.slow)])
def test_full_disk(open_shell, flat_trace, small_fs, energy_home, tmp_path, capfd, monkeypatch, where, caplog):
    """The disk under the spool, the sqlite store, or both fills up mid-sweep, then frees again."""
    fs = small_fs("small")
    env = replay_env(flat_trace, f"sqlite:///{(fs.path if where != 'spool' else tmp_path) / 'mlflow.db'}")
    if where != "store":
        env["IPYTHON_ENERGY_HOME"] = str(fs.path / "energy-home")
    ip = open_shell(env=env)
    sweep = Sweep(ip, f"full-{where}")
    sweep.cell()
    assert ipython_energy.flush(120)
    capfd.readouterr()
    fs.fill()
    cell_s = []
    for _ in range(15):
        cell_s.append(sweep.cell())
        time.sleep(0.3)
    status = ipython_energy.tracker().writer_status()
    if where == "spool":
        assert ipython_energy.flush(60)  # MLflow takes everything; only the journal is short
        assert not status.spool_ok and "No space left" in status.spool_error
    else:
        assert not ipython_energy.flush(1)  # held (spool or memory) until the store can take it
    during = capfd.readouterr().err
    fs.free()
    sweep.cell()
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(180)
    assert ip.run_cell("%%energy --no-log\npass").success  # the next cell says it is over
    after = capfd.readouterr().err
    assert log_noise(caplog) == []  # nothing else reached the user through logging
    figure(capfd, f"full-disk-{where}: cell wall time p50 {median(cell_s) * 1e3:.2f} ms, "
          f"max {max(cell_s) * 1e3:.1f} ms")
    assert max(cell_s) < 0.5
    warnings = outage_warnings(during)
    # One line for each condition, even when both begin at once (the spool's used to be swallowed).
    expected = {"store": ["not answering"], "spool": ["cannot write the local spool"]}.get(
        where, ["not answering", "cannot write the local spool"])
    assert len(warnings) == len(expected), during
    for what in expected:
        (line,) = [w for w in warnings if what in w]
        assert "No space left" in line or "disk is full" in line
    notes = {"store": [RECOVERY_NOTE], "spool": [SPOOL_RECOVERY_NOTE]}.get(where, [RECOVERY_NOTE, SPOOL_RECOVERY_NOTE])
    assert not outage_warnings(after) and all(after.count(note) == 1 for note in notes), after
    sweep.check_arrived_once(sweep_uri := env["MLFLOW_TRACKING_URI"])
    assert sweep_uri


@pytest.mark.skipif(not _is_root(), reason="mounting a small tmpfs to fill needs root")
def test_journal_written_on_a_full_disk_keeps_every_later_event(energy_home, small_fs, monkeypatch):
    """A write cut short by ENOSPC must not swallow the next event once space is back.

    Real Spool on a real full tmpfs: the journal's last page has slack, so the line that
    straddles it is written in part; the journal must start the next event on a line of its own.
    """
    from ipython_energy.spool import Spool, SpoolError

    fs = small_fs("spool-fs", size="1m")
    monkeypatch.setenv("IPYTHON_ENERGY_HOME", str(fs.path / "home"))
    spool = Spool.create("full")
    payload = "x" * 300
    for i in range(3):
        spool.append({"type": "metrics", "uid": f"before-{i}", "pad": payload})
    fs.fill()
    failed = 0
    for i in range(40):  # fills the journal's last page, then fails
        try:
            spool.append({"type": "metrics", "uid": f"during-{i}", "pad": payload})
        except SpoolError:
            failed += 1
    assert failed > 0
    fs.free()
    after = [f"after-{i}" for i in range(5)]
    for uid in after:
        spool.append({"type": "metrics", "uid": uid, "pad": payload})
    spool.close()
    readable = [ev["uid"] for _, ev in Spool.adopt(spool.directory, "full").events()]
    assert readable[:3] == ["before-0", "before-1", "before-2"]
    assert readable[-5:] == after, "an event written after the disk freed is missing from the journal"


# ---- a read-only working directory: the default store cannot be created ----------------------------

def test_read_only_working_directory(open_shell, flat_trace, tmp_path, capfd, small_fs, caplog):
    """No MLFLOW_TRACKING_URI: the default store is mlflow.db in the working directory, which is read-only."""
    if _is_root():  # root ignores file modes: a read-only mount makes the directory really read-only
        fs = small_fs("notebooks", size="64m", options="ro")
        workdir = fs.path
    else:
        fs = None
        workdir = tmp_path / "notebooks"
        workdir.mkdir()
        workdir.chmod(0o555)
    ip = open_shell(env=replay_env(flat_trace, None), cwd=workdir, warm=False)
    store = workdir / "mlflow.db"
    assert ipython_energy.tracker().tracking_uri == f"sqlite:///{store}"
    sweep = Sweep(ip, "read-only")
    cell_s = []
    started = time.monotonic()
    while time.monotonic() - started < 3.0:
        cell_s.append(sweep.cell())
        time.sleep(0.2)
    assert not ipython_energy.flush(0.5)
    during = capfd.readouterr().err
    assert not store.exists()
    if fs is not None:
        fs.remount("rw")
    else:
        workdir.chmod(0o755)
    sweep.cell()
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(180)
    assert ip.run_cell("%%energy --no-log\npass").success
    after = capfd.readouterr().err
    assert log_noise(caplog) == []  # nothing else reached the user through logging
    figure(capfd, f"read-only-cwd: cell wall time p50 {median(cell_s) * 1e3:.2f} ms, max {max(cell_s) * 1e3:.1f} ms")
    assert max(cell_s) < 0.5
    warnings = outage_warnings(during)
    assert len(warnings) == 1, during
    assert f"cannot create {store}: {workdir} is not writable" in warnings[0]
    assert not outage_warnings(after) and after.count(RECOVERY_NOTE) == 1, after
    sweep.check_arrived_once(f"sqlite:///{store}")


# ---- the writer on its own: interrupted run creation, a param MLflow refuses ------------------------

def _run_start(uri: str, uid: str, params: dict[str, str]):
    from ipython_energy.events import RunStart

    return RunStart(uid, "interrupted", int(time.time() * 1000), uri, "ipython-energy", params=params)


def test_run_created_before_a_crash_gets_its_params_on_replay(energy_home, sqlite_uri):
    """MLflow created the run, then the kernel died before its params were logged (outcome in doubt).

    Real MLflow store: the run exists with its energy.uid and no params; the dead kernel's journal
    holds the unacknowledged run_start.  The next kernel must find the run and log the params.
    """
    from mlflow.tracking import MlflowClient

    from ipython_energy.spool import Spool
    from ipython_energy.writer import Writer

    client = MlflowClient(sqlite_uri)
    exp = client.create_experiment("ipython-energy")
    client.create_run(exp, run_name="interrupted", tags={"energy.uid": "u-1", "energy.kind": "run"})
    dead = Spool.create("dead")
    dead.append(_run_start(sqlite_uri, "u-1", {"lr": "0.01", "résumé-Ω": "naïve"}).to_wire())
    dead.close()  # the kernel died: the journal is left, unacknowledged
    writer = Writer(Spool.create("next"))
    writer.start()
    assert writer.flush(120)
    writer.close()
    (run,) = client.search_runs([exp])
    assert run.data.params == {"lr": "0.01", "résumé-Ω": "naïve"}, "params lost when the run already existed"


def test_param_mlflow_refuses_is_recorded_and_blocks_nothing(energy_home, sqlite_uri):
    """A param key MLflow will never store (from a journal of an older version, or any caller that
    skipped the magic's check) is recorded in energy.params_rejected; later events still arrive."""
    from ipython_energy.events import RunEnd
    from ipython_energy.spool import Spool
    from ipython_energy.writer import Writer

    writer = Writer(Spool.create("w"))
    writer.submit(_run_start(sqlite_uri, "u-2", {"a;b": "1", "ok": "2"}))
    t_ms = int(time.time() * 1000)
    writer.submit(RunEnd("u-2", "FINISHED", t_ms, (("energy_j", 12.5, 0, t_ms),)))
    assert writer.flush(120)
    writer.close()
    _, (run,) = mlflow_runs(sqlite_uri)
    assert run.data.params == {"ok": "2"}
    assert run.data.tags["energy.params_rejected"].startswith("a;b=1: ")
    assert run.data.metrics["energy_j"] == 12.5 and run.info.status == "FINISHED"
