"""Journal faults: a dead session's journal that is corrupt, that names an MLflow which no longer
answers, or that could not be written at all (a full disk while MLflow was down).

Through the real magic in a real IPython shell where the user sees something (notes after a cell,
``%energy``, ``%energy flush``, ``%energy spool``), with real spool files and a real MLflow sqlite
store.  Hardware seam: the replay sensor plays a flat trace (gpu0 100 W, cpu 20 W).  The dead
session's journal is written by the real Spool (or by a real writer process that is SIGKILLed);
a corruption is then made in the file as a disk, an editor or a bug would make it.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import ipython_energy
from faultkit import mlflow_runs, outage_warnings, split_sweep, wait_until
from ipython_energy.events import Metrics, RunEnd, RunStart, SweepEnd, SweepStart
from ipython_energy.spool import Spool
from tests.faults.test_fault_backend import SmallFs, _is_root, replay_env

DEAD_URI = "http://127.0.0.1:9"  # the discard port: connection refused at once


def sweep_events(uri: str, sweep_uid: str, energies: list[float], experiment: str = "ipython-energy",
                 pad: int = 0) -> list:
    """A sweep of one run per energy, as a tracker journals it (start, cell metrics, end per run).

    ``pad``: a param of that many characters per run (a journal line larger than a page's slack)."""
    t = int(time.time() * 1000)
    events = [SweepStart(sweep_uid, f"grid-{sweep_uid}", t, uri, experiment)]
    for i, energy in enumerate(energies):
        uid = f"{sweep_uid}-run{i}"
        params = {"i": str(i), **({"pad": "x" * pad} if pad else {})}
        events += [RunStart(uid, f"{sweep_uid} i={i}", t, uri, experiment, sweep_uid=sweep_uid, params=params),
                   Metrics(uid, (("cell_energy_j", energy, 3 + i, t),)),
                   RunEnd(uid, "FINISHED", t, (("energy_j", energy, 0, t),))]
    return events + [SweepEnd(sweep_uid, "FINISHED", t)]


def dead_journal(session: str, events: list) -> Path:
    """``events`` journalled by a session that then died (its lock released, nothing acked)."""
    spool = Spool.create(session)
    for event in events:
        spool.append(event.to_wire())
    spool.close()
    return spool.path


def children_of(uri: str, sweep_name: str):
    client, found = mlflow_runs(uri)
    sweeps, children = split_sweep(found)
    parents = [s for s in sweeps if s.info.run_name == sweep_name]
    assert len(parents) == 1, [s.info.run_name for s in sweeps]
    mine = [c for c in children if c.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return client, parents[0], mine


# ---- a corrupt line in a dead session's journal -------------------------------------------------------

def _flip_key(line: dict) -> dict:
    line["typf"] = line.pop("type")
    return line


def _string_value(line: dict) -> dict:
    line["metrics"][0][1] = "12.5 J"
    return line


CORRUPTIONS = {
    # name: (how the 3rd line (run 0's cell metrics) is changed, the error the note gives)
    "flipped-key": (lambda raw: json.dumps(_flip_key(json.loads(raw))).encode(), "no 'type' field"),
    "string-value": (lambda raw: json.dumps(_string_value(json.loads(raw))).encode(),
                     "the value must be a number, not '12.5 J'"),
    "torn": (lambda raw: raw[: len(raw) // 2], "cut short"),
    "garbage": (lambda raw: b"\x00\x17\xff garbage \x00", "not JSON"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_journal_line_is_skipped_with_one_note_and_the_rest_arrives(
        open_shell, flat_trace, sqlite_uri, energy_home, capfd, caplog, corruption):
    change, says = CORRUPTIONS[corruption]
    path = dead_journal("corrupt", sweep_events(sqlite_uri, "sw", [1.0, 2.0, 4.0]))
    lines = path.read_bytes().split(b"\n")
    lines[2] = change(lines[2])  # run 0's cell metrics (line 3)
    path.write_bytes(b"\n".join(lines))
    ip = open_shell(env=replay_env(flat_trace, sqlite_uri))
    ipython_energy.tracker()._writer.recovery_every_s = 0.2  # many passes: a note per pass would show
    assert ipython_energy.flush(120)
    for _ in range(3):
        assert ip.run_cell("%%energy --quiet\npass").success
        time.sleep(0.3)
    ip.run_line_magic("energy", "")
    cap = capfd.readouterr()
    err = cap.err
    client, parent, children = children_of(sqlite_uri, "grid-sw")
    assert sorted(c.info.run_name for c in children) == ["sw i=0", "sw i=1", "sw i=2"]
    by_name = {c.info.run_name: c for c in children}
    assert [c.data.metrics["energy_j"] for c in (by_name["sw i=0"], by_name["sw i=1"], by_name["sw i=2"])] == [1, 2, 4]
    assert "cell_energy_j" not in by_name["sw i=0"].data.metrics  # the skipped line
    assert by_name["sw i=2"].data.metrics["cell_energy_j"] == 4.0  # every event after it arrived
    assert parent.data.metrics["sweep_energy_j"] == 7.0
    notes = [line for line in err.splitlines() if "unreadable line" in line]
    assert len(notes) == 1, err
    assert f"skipped 1 unreadable line(s) of the journal {path}: line 3: " in notes[0] and says in notes[0], notes
    kept = energy_home / "spool" / "rejected" / "corrupt.jsonl"
    assert f"kept in {kept}" in notes[0] and json.loads(kept.read_text())["line"] == 3
    assert not path.exists()  # fully replayed and retired
    assert outage_warnings(err) == [] and "writer: ok" in cap.out
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


# ---- a dead session's journal for an MLflow that no longer answers -------------------------------------

def test_journal_for_an_unreachable_mlflow_is_shown_delivered_once_or_discarded(
        open_shell, flat_trace, sqlite_uri, energy_home, capfd, caplog):
    dead_journal("gone-server", sweep_events(DEAD_URI, "old", [3.0, 5.0], experiment="elsewhere"))
    dead_journal("gone-too", sweep_events(DEAD_URI, "other", [7.0]))
    ip = open_shell(env=replay_env(flat_trace, sqlite_uri))
    writer = ipython_energy.tracker()._writer
    wait_until(lambda: {"gone-server", "gone-too"} <= set(writer.old_waiting), 60, what="both journals tried")
    for _ in range(3):
        assert ip.run_cell("%%energy --quiet\npass").success
    ip.run_line_magic("energy", "")
    cap = capfd.readouterr()
    assert outage_warnings(cap.err) == [], cap.err  # this session's MLflow answers: never called not answering
    waiting = [line for line in cap.err.splitlines() if "waits for MLflow at" in line]
    assert len(waiting) == 2 and all(DEAD_URI in line for line in waiting), cap.err
    assert "writer: ok" in cap.out
    status = next(line for line in cap.out.splitlines() if "session gone-server:" in line)
    assert ("8 event(s), 2 run(s), 8 J for http://127.0.0.1:9 (experiment 'elsewhere')" in status
            and "not answering" in status), status

    ip.run_line_magic("energy", "flush")
    out = capfd.readouterr().out
    assert "MLflow has every measurement of this session; 13 event(s) of 2 earlier session(s) still wait" in out, out

    ip.run_line_magic("energy", "spool")
    listing = capfd.readouterr().out
    assert "session gone-server: 8 event(s)" in listing and "session gone-too: 5 event(s)" in listing, listing

    ip.run_line_magic("energy", "spool deliver gone-server")
    out = capfd.readouterr().out
    assert (f"delivered the journal of session gone-server to MLflow at {sqlite_uri}, experiment 'ipython-energy': "
            "8 event(s), 2 run(s), 8 J") in out, out
    writer.recover_now(60)  # another pass, and delivering again, write nothing twice
    with pytest.raises(UsageError, match="no journal of session 'gone-server'"):
        ip.run_line_magic("energy", "spool deliver gone-server")
    client, parent, children = children_of(sqlite_uri, "grid-old")
    assert sorted(c.info.run_name for c in children) == ["old i=0", "old i=1"]
    assert parent.data.metrics["sweep_energy_j"] == 8.0
    assert [m.value for m in client.get_metric_history(parent.info.run_id, "sweep_energy_j")] == [3.0, 8.0]

    ip.run_line_magic("energy", "spool discard gone-too")
    out = capfd.readouterr().out
    moved = energy_home / "spool" / "discarded" / "gone-too.jsonl"
    assert "set aside the journal of session gone-too" in out and str(moved) in out, out
    assert moved.exists() and not (energy_home / "spool" / "gone-too.jsonl").exists()
    assert len(moved.read_text().splitlines()) == 5  # kept whole

    ip.run_line_magic("energy", "flush")
    assert "ipython-energy: MLflow has every measurement\n" in capfd.readouterr().out
    assert ip.run_cell("%%energy --quiet\npass").success
    assert outage_warnings(capfd.readouterr().err) == []


@pytest.mark.parametrize("line", ["spool frobnicate", "spool deliver", "spool deliver a b", "spool discard nosuch",
                                  "spool deliver nosuch"])
def test_bad_spool_command_is_a_usage_error(open_shell, flat_trace, sqlite_uri, line):
    ip = open_shell(env=replay_env(flat_trace, sqlite_uri), warm=False)
    with pytest.raises(UsageError, match="%energy spool"):
        ip.run_line_magic("energy", line)


# ---- a full disk while MLflow is down ---------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(name, size)``: a small tmpfs mounted for the test (root only), as in test_fault_backend."""
    mounted = []

    def make(name: str, size: str = "16m") -> SmallFs:
        fs = SmallFs(tmp_path / name, size)
        mounted.append(fs)
        return fs

    yield make
    for fs in mounted:
        fs.unmount()


WRITER_SCRIPT = textwrap.dedent("""
    import sys, time
    from ipython_energy.events import RunEnd, RunStart, Metrics, SweepEnd, SweepStart
    from ipython_energy.spool import Spool
    from ipython_energy.writer import Writer
    exec(sys.argv[2])  # sweep_events, as in the test module
    writer = Writer(Spool.create("doomed"), adopt_orphans=False, retry_max_s=0.2)
    print("ready", flush=True)
    sys.stdin.readline()  # the disk is full now
    events = sweep_events(sys.argv[1], "lost", [10.0, 20.0, 30.0, 40.0, 50.0])
    for event in events:
        writer.submit(event)
    while writer.held_in_memory < len(events):
        time.sleep(0.05)
    print("held", writer.held_in_memory, flush=True)
    time.sleep(600)  # until SIGKILLed
""")


@pytest.mark.skipif(not _is_root(), reason="mounting a small tmpfs to fill needs root")
def test_events_lost_to_a_full_disk_while_mlflow_is_down_are_counted_on_the_next_load(
        open_shell, flat_trace, sqlite_uri, small_fs, monkeypatch, capfd):
    fs = small_fs("spool-fs", size="1m")
    home = fs.path / "home"
    env = {**os.environ, "IPYTHON_ENERGY_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, DEAD_URI, inspect.getsource(sweep_events)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).parents[2])
    try:
        assert proc.stdout.readline().strip() == "ready"
        fs.fill()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ["held", "17"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the kernel dies
        proc.wait(10)
    fs.free()
    ip = open_shell(env={**replay_env(flat_trace, sqlite_uri), "IPYTHON_ENERGY_HOME": str(home)})
    assert ipython_energy.flush(60)
    ip.run_cell("%%energy --quiet\npass")
    ip.run_cell("%%energy --quiet\npass")
    err = capfd.readouterr().err
    lost = [line for line in err.splitlines() if "could not be journalled" in line]
    assert lost == ["ipython-energy: session doomed lost 17 event(s) (5 run(s), 150 J) that could not be journalled "
                    "(its disk was full) and never reached MLflow before its kernel ended."], err
    kept = home / "spool" / "rejected" / "doomed.jsonl"
    assert json.loads(kept.read_text().splitlines()[-1])["lost"] == {"events": 17, "runs": 5, "energy_j": 150.0}


@pytest.mark.skipif(not _is_root(), reason="mounting a small tmpfs to fill needs root")
def test_events_held_in_memory_are_journalled_in_order_when_space_returns(
        energy_home, sqlite_uri, small_fs, monkeypatch):
    from ipython_energy.writer import Writer

    fs = small_fs("spool-fs", size="1m")
    monkeypatch.setenv("IPYTHON_ENERGY_HOME", str(fs.path / "home"))
    spool = Spool.create("full-then-free")
    writer = Writer(spool, adopt_orphans=False, retry_max_s=0.2)
    events = sweep_events(DEAD_URI, "sw", [1.0, 2.0, 3.0, 4.0, 5.0], pad=5000)  # MLflow is down throughout
    for event in events[:4]:  # sweep start and run 0: journalled
        writer.submit(event)
    wait_until(lambda: spool.last_seq == 4, 10, what="the first events journalled")
    fs.fill()
    for event in events[4:13]:  # runs 1-3: the disk is full (the journal's last page may take a line or two)
        writer.submit(event)
    wait_until(lambda: writer.held_in_memory and spool.last_seq + writer.held_in_memory == 13, 10,
               what="events held in memory")
    held = events[spool.last_seq:13]
    assert len(held) >= 6, "at least runs 2 and 3 are held"
    assert spool.held() == {"events": len(held), "runs": len({e.uid for e in held if not isinstance(e, Metrics)}),
                            "energy_j": sum(e.energy_j() for e in held if isinstance(e, RunEnd))}
    fs.free()
    wait_until(lambda: writer.held_in_memory == 0, 5, what="held events journalled once space is back")
    for event in events[13:]:  # run 4 and the sweep's end
        writer.submit(event)
    wait_until(lambda: spool.last_seq == len(events), 10, what="every event journalled")
    assert writer.status().spool_ok and spool.held() == {"events": 0, "runs": 0, "energy_j": 0.0}
    assert [(seq, ev) for seq, ev in spool.events()] == [(i, e.to_wire()) for i, e in enumerate(events, 1)]
    # The kernel dies; the journal is all the next one needs (pointed at a store that answers).
    journal = spool.path.read_text()
    writer.close(timeout_s=0)
    spool.path.write_text(journal.replace(DEAD_URI, sqlite_uri))
    nxt = Writer(Spool.create("next"))
    assert nxt.recover_now(120) and nxt.flush(120)
    client, parent, children = children_of(sqlite_uri, "grid-sw")
    assert sorted(c.data.metrics["energy_j"] for c in children) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert parent.data.metrics["sweep_energy_j"] == 15.0
    nxt.close()
