"""ipython_energy.query without a server: the session view, discovery, and the cached incremental
reader against a real MLflow sqlite store (the pure roll-up is tested in tests/test_rollup.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import register_kernel, write_live
from layout_data import SweepLog, experiment_id, log_repeat_sweep, log_sweep

from ipython_energy import query


# -- session ----------------------------------------------------------------------------
def test_session_view_reads_live_files_and_drops_dead_kernels(energy_home, tmp_path):
    write_live(energy_home, "alive", active_run={"name": "<b>x</b>", "energy_j": 3.0})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_live(energy_home, "dead", pid=dead.pid)
    view = query.session_view()
    assert [s["session"] for s in view["sessions"]] == ["alive"]
    s = view["sessions"][0]
    assert s["power_w"] == 12.5 and s["cells_j"] == 1000.0 and s["between_cells_j"] == 250.0
    assert s["estimated"] is True and s["active_run"] == {"name": "<b>x</b>", "energy_j": 3.0}
    assert s["stale"] is False


def test_session_view_carries_the_three_parts_and_old_files_without_them(energy_home):
    """A kernel of this version writes the three parts and, for old sidebars, cells_j /
    between_cells_j (registry.session_figures); a file of the previous version has only those two."""
    from ipython_energy import registry

    parts = {"duration_s": 100.0, "total_j": 1250.0, "in_runs_j": 700.0, "other_cells_j": 300.0, "idle_j": 250.0,
             "in_runs_s": 56.0, "other_cells_s": 24.0, "idle_s": 20.0}
    write_live(energy_home, "new", **registry.session_figures(parts))
    write_live(energy_home, "old", updated_at=1.0)
    new, old = query.session_view(now=2.0)["sessions"]
    assert {k: new[k] for k in parts} == parts
    assert (new["cells_j"], new["between_cells_j"]) == (700.0, 550.0)
    assert all(old[k] is None for k in parts if k not in ("duration_s", "total_j"))
    assert (old["cells_j"], old["between_cells_j"]) == (1000.0, 250.0)


def test_session_view_marks_stale_files(energy_home):
    import time

    write_live(energy_home, "old", updated_at=time.time() - 60)
    assert query.session_view()["sessions"][0]["stale"] is True


def test_half_written_live_file_is_skipped(energy_home):
    (energy_home / "live").mkdir(parents=True)
    (energy_home / "live" / "x.json").write_text('{"session": "x", "pow')
    assert query.session_view() == {"sessions": []}


# -- discovery --------------------------------------------------------------------------
def test_discovery_uses_kernel_registrations_before_environment(energy_home, tmp_path):
    register_kernel(energy_home, "sqlite:////data/a/mlflow.db", "exp-a", session="k1")
    root = tmp_path / "root"
    root.mkdir()
    (root / "mlflow.db").write_bytes(b"")
    found = query.discover_sources(root_dir=root, environ={"MLFLOW_TRACKING_URI": "http://127.0.0.1:5999"})
    assert [(s.tracking_uri, s.experiment_name, s.origin) for s in found] == [
        ("sqlite:////data/a/mlflow.db", "exp-a", "kernel"),
        ("http://127.0.0.1:5999", "ipython-energy", "environment"),
        (f"sqlite:///{root.resolve() / 'mlflow.db'}", "ipython-energy", "server-root"),
    ]
    assert found[0].live_sessions == ("k1",)


def test_discovery_dedups_and_puts_live_kernels_first(energy_home):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    register_kernel(energy_home, "sqlite:////old.db", "e", session="old", pid=dead.pid)
    register_kernel(energy_home, "sqlite:////new.db", "e", session="n1")
    register_kernel(energy_home, "sqlite:////new.db", "e", session="n2")
    found = query.discover_sources(environ={})
    assert [s.tracking_uri for s in found] == ["sqlite:////new.db", "sqlite:////old.db"]
    assert set(found[0].live_sessions) == {"n1", "n2"} and found[1].live_sessions == ()


def test_server_config_overrides_discovery(energy_home):
    register_kernel(energy_home, "sqlite:////a.db", "e")
    found = query.discover_sources(tracking_uri="http://mlflow:5000", experiment="mine", environ={})
    assert [(s.tracking_uri, s.experiment_name, s.origin) for s in found] == [("http://mlflow:5000", "mine", "config")]


def test_source_ids_are_opaque_and_uris_hide_credentials():
    src = query.Source("https://user:secret@mlflow.example:8443/x", "e", "config")
    assert len(src.id) == 12 and "secret" not in str(src.public())
    assert src.public()["tracking_uri"] == "https://mlflow.example:8443/x"


# -- the reader, on a real MLflow store ------------------------------------------------------
def test_reader_does_not_create_a_missing_sqlite_store(tmp_path):
    reader = query.SourceReader(f"sqlite:///{tmp_path / 'nothing.db'}")
    assert reader.experiment_id("ipython-energy") is None
    assert not (tmp_path / "nothing.db").exists()


def test_reader_sweep_matches_what_was_logged(tracking):
    uri, client = tracking
    exp = experiment_id(client, "e")
    s = log_sweep(client, exp, "grid", [100.0, 200.0, 300.0], statuses=["FINISHED", "FAILED", "KILLED"],
                  params=[{"lr": 0.1}, {"lr": 0.01}, {"lr": 0.001}], planned=5, budget_j=1000.0, estimated=True)
    reader = query.SourceReader(uri)
    d = reader.sweep_data("e", s.run_id)
    assert d["sweep"]["name"] == "grid" and d["sweep"]["planned"] == 5 and d["sweep"]["budget_j"] == 1000.0
    assert [(r["status"], r["energy_j"]) for r in d["runs"]] == [("finished", 100.0), ("failed", 200.0),
                                                                 ("killed", 300.0)]
    assert d["runs"][2]["params"] == {"lr": "0.001"}
    assert d["runs"][0]["provenance"]["methods"] == "cpu=estimated"
    assert d["totals"]["energy_j"] == 600.0 and d["totals"]["forecast_energy_j"] == 1000.0
    # the reader's own total agrees with the writer-style roll-up on the parent run
    assert d["totals"]["ended_energy_j"] == d["sweep"]["logged_energy_j"]
    with pytest.raises(query.NotFound):
        reader.sweep_data("e", s.children[0])  # a child run is not a sweep
    with pytest.raises(query.NotFound):
        reader.sweep_data("e", "0" * 32)


def test_reader_is_incremental_and_follows_a_running_sweep(tracking):
    uri, client = tracking
    exp = experiment_id(client, "e")
    s = log_sweep(client, exp, "grid", [10.0] * 50, end=False)
    reader = query.SourceReader(uri)
    first = reader.sweep_data("e", s.run_id)
    assert first["totals"]["runs"] == 50 and reader.stats["full_loads"] == 1

    rid = s.start_run("live-one", {"lr": 1})
    s.live(rid, 3.5, 7.0, 1)
    d = reader.sweep_data("e", s.run_id)
    assert d["totals"]["runs"] == 51 and d["runs"][-1]["live"] and d["runs"][-1]["energy_j"] == 3.5
    s.live(rid, 8.0, 7.0, 2)
    assert reader.sweep_data("e", s.run_id)["runs"][-1]["energy_j"] == 8.0
    s.end_run(rid, 9.0, 1.2)
    d = reader.sweep_data("e", s.run_id)
    last = d["runs"][-1]
    assert (last["status"], last["energy_j"], last["live"]) == ("finished", 9.0, False)
    assert d["totals"]["energy_j"] == 509.0
    assert reader.stats["full_loads"] == 1  # every refresh after the first was incremental

    s.end()
    assert reader.sweep_data("e", s.run_id)["sweep"]["status"] == "finished"
    searches = reader.stats["searches"]
    reader.sweep_data("e", s.run_id)
    reader.sweep_data("e", s.run_id)
    assert reader.stats["searches"] == searches  # an ended sweep costs only the parent's get_run


def test_reader_finds_a_short_run_that_started_and_ended_between_two_reads(tracking):
    uri, client = tracking
    exp = experiment_id(client, "e")
    s = log_sweep(client, exp, "grid", [10.0] * 3, end=False)
    reader = query.SourceReader(uri)
    reader.sweep_data("e", s.run_id)
    searches = reader.stats["searches"]
    reader.sweep_data("e", s.run_id)
    # nothing runs and the parent's claims name no new child: no search at all
    assert reader.stats["searches"] == searches
    rid = s.start_run("quick")
    s.end_run(rid, 7.0, 0.1)  # also moves the parent's sweep_runs, as the writer does
    d = reader.sweep_data("e", s.run_id)
    assert d["totals"]["runs"] == 4 and d["runs"][-1]["energy_j"] == 7.0
    assert reader.stats["full_loads"] == 1


def test_reader_catches_runs_written_late_from_the_spool(tracking):
    """A run replayed long after it ended (old end_time) is found through the parent's sweep_runs."""
    uri, client = tracking
    exp = experiment_id(client, "e")
    s = log_sweep(client, exp, "grid", [10.0, 10.0], end=False)
    reader = query.SourceReader(uri)
    assert reader.sweep_data("e", s.run_id)["totals"]["runs"] == 2
    old = 1_000_000_000_000  # 2001: far outside any look-back margin
    rid = s.start_run("replayed", start_ms=old)
    s.end_run(rid, 99.0, 1.0, end_ms=old + 1000)
    d = reader.sweep_data("e", s.run_id)
    assert d["totals"]["runs"] == 3 and d["totals"]["energy_j"] == 119.0


def test_reader_drops_a_deleted_running_run(tracking):
    uri, client = tracking
    exp = experiment_id(client, "e")
    s = log_sweep(client, exp, "grid", [10.0], end=False)
    rid = s.start_run("cell-run")
    reader = query.SourceReader(uri)
    assert reader.sweep_data("e", s.run_id)["totals"]["runs"] == 2
    client.delete_run(rid)
    assert reader.sweep_data("e", s.run_id)["totals"]["runs"] == 1


def filters_of(reader: query.SourceReader) -> list[str]:
    """The filter of every search the reader makes from now on (the real client, recorded)."""
    seen, search = [], reader.client.search_runs

    def recorded(*args, **kwargs):
        seen.append(kwargs.get("filter_string", ""))
        return search(*args, **kwargs)

    reader.client.search_runs = recorded
    return seen


def eventually(read, ok, timeout_s: float = 60.0):
    """``read()`` until ``ok`` of it holds (a big sweep's parent is re-read in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = read()
        if ok(got):
            return got
        assert time.monotonic() < deadline, f"never true; last {got}"
        time.sleep(0.05)


def test_reader_follows_a_sweep_by_its_claims_without_searching_its_children(tracking):
    """A run started on another host (its clock far behind: no look-back by time finds it)
    appears through its run number's claim on the parent, and a running run that ends is
    re-read by its id: no search over the sweep's children after the first read."""
    uri, client = tracking
    exp = experiment_id(client, "e")
    s = log_sweep(client, exp, "grid", [10.0] * 3, end=False)
    reader = query.SourceReader(uri)
    assert reader.sweep_data("e", s.run_id)["totals"]["runs"] == 3
    filters = filters_of(reader)
    elsewhere = s.start_run("other-host", start_ms=1_000_000_000_000, tags={"energy.host": "far"})
    s.live(elsewhere, 4.0, 2.0, 1)
    d = reader.sweep_data("e", s.run_id)
    assert d["totals"]["runs"] == 4 and d["runs"][-1]["run_id"] == elsewhere and d["runs"][-1]["live"]
    assert {h["host"] for h in d["hosts"]} >= {"far"}
    s.end_run(elsewhere, 8.0, 1.0)
    d = reader.sweep_data("e", s.run_id)
    assert (d["runs"][-1]["status"], d["runs"][-1]["energy_j"]) == ("finished", 8.0)
    assert d["totals"]["energy_j"] == 38.0
    assert filters and all(f.startswith("attributes.run_id IN") for f in filters), filters
    assert reader.stats["full_loads"] == 1


def test_reader_reads_a_costly_parent_in_the_background(tracking):
    """A parent too costly to read on every poll (here: every parent, ``parent_sync_s=0``) is
    re-read in the background: polls answer from the copy, new runs come from a search on
    start time alone or, when that cannot find them, from the claims of the next re-read;
    the experiment view leaves the sweep out of its searches."""
    uri, client = tracking
    exp = experiment_id(client, "e")
    s = log_sweep(client, exp, "grid", [10.0] * 3, end=False)
    reader = query.SourceReader(uri, parent_sync_s=0.0, parent_every_s=0.0)
    reader.sweep_data("e", s.run_id)
    eventually(lambda: reader._parents[s.run_id].cost_s, lambda cost: cost is not None)
    filters = filters_of(reader)
    now = s.start_run("now")  # found by its start time in the very next poll
    assert reader.sweep_data("e", s.run_id)["runs"][-1]["run_id"] == now
    assert not any("parentRunId" in f for f in filters), filters
    late = s.start_run("late", start_ms=1_000_000_000_000)  # only its claim names it
    eventually(lambda: [r["run_id"] for r in reader.sweep_data("e", s.run_id)["runs"]], lambda ids: late in ids)
    assert not any("parentRunId" in f for f in filters), filters

    reader.experiment_data("e")
    del filters[:]
    s.end_run(now, 5.0, 1.0)
    s.end_run(late, 5.0, 1.0)
    s.end()
    data = eventually(lambda: reader.experiment_data("e"), lambda d: d["sweeps"][0]["status"] == "finished")
    assert data["sweeps"][0]["runs"] == 5
    sweep_searches = [f for f in filters if "energy.kind" in f]
    assert sweep_searches and all(f"NOT IN ('{s.run_id}')" in f for f in sweep_searches), filters
    d = eventually(lambda: reader.sweep_data("e", s.run_id), lambda d: d["sweep"]["status"] == "finished")
    assert d["totals"]["runs"] == 5 and d["totals"]["energy_j"] == 40.0


def test_reader_reads_a_big_sweeps_newest_runs_first_by_their_claims(tracking):
    """A big sweep's first view reads the runs with the highest claimed numbers by id, and no
    poll while the rest loads in the background reads those older runs by id."""
    uri, client = tracking
    exp = experiment_id(client, "e")
    s = log_sweep(client, exp, "grid", [10.0] * 20, end=False)
    reader = query.SourceReader(uri, first_runs=5)
    filters = filters_of(reader)
    first = reader.sweep_data("e", s.run_id)
    assert [r["run_id"] for r in first["runs"]][-5:] == s.children[-5:]
    assert first["totals"]["runs"] == 20 and first["totals"]["energy_j"] == 200.0
    reader.sweep_data("e", s.run_id)
    by_id = " ".join(f for f in filters if f.startswith("attributes.run_id IN"))
    assert not any(rid in by_id for rid in s.children[:15]), "an older run read by id"
    d = eventually(lambda: reader.sweep_data("e", s.run_id), lambda d: not reader.loading(s.run_id))
    assert [r["run_id"] for r in d["runs"]] == s.children and d["totals"]["energy_j"] == 200.0


def test_reader_follows_a_sweep_written_before_claims(tracking):
    """A sweep without ``energy.index.*`` params (written by an earlier version): new runs are
    found by their start time, runs that end by their id, and a run replayed from the spool
    long after it ended through the parent's sweep_runs."""
    uri, client = tracking
    exp = experiment_id(client, "e")
    s = SweepLog.start(client, exp, "old", claims=False)
    for i in range(2):
        s.end_run(s.start_run(f"r{i}"), 10.0, 1.0)
    assert not client.get_run(s.run_id).data.params
    reader = query.SourceReader(uri)
    assert reader.sweep_data("e", s.run_id)["totals"]["runs"] == 2
    rid = s.start_run("live")
    s.live(rid, 3.0, 1.0, 1)
    d = reader.sweep_data("e", s.run_id)
    assert d["totals"]["runs"] == 3 and d["runs"][-1]["live"]
    s.end_run(rid, 6.0, 1.0)
    assert reader.sweep_data("e", s.run_id)["runs"][-1]["status"] == "finished"
    old = 1_000_000_000_000
    s.end_run(s.start_run("replayed", start_ms=old), 99.0, 1.0, end_ms=old + 1000)
    d = reader.sweep_data("e", s.run_id)
    assert d["totals"]["runs"] == 4 and d["totals"]["energy_j"] == 125.0


def test_reader_experiment_view_flags_rebound(tracking):
    uri, client = tracking
    exp = experiment_id(client, "e")
    log_sweep(client, exp, "big-model", [100.0] * 10)          # 100 J/run, 1000 J
    log_sweep(client, exp, "small-model", [42.0] * 50)         # 42 J/run, 2100 J
    data = query.SourceReader(uri).experiment_data("e")
    names = [s["name"] for s in data["sweeps"]]
    assert names == ["big-model", "small-model"]
    small = data["sweeps"][1]
    assert small["runs"] == 50 and small["mean_energy_per_run_j"] == pytest.approx(42.0)
    assert small["energy_j"] == pytest.approx(2100.0)
    assert small["rebound"]["vs_name"] == "big-model"
    assert small["rebound"]["label"] == "\u221258% J/run, +110% total"
    assert data["sweeps"][0]["rebound"] is None


def test_reader_rebound_with_repeats_carries_its_interval(tracking):
    """Both sweeps ran their configurations with repeats (group parents among their children):
    the flag fires with the two changes' 95 % intervals, and the group parents are no runs."""
    uri, client = tracking
    exp = experiment_id(client, "e")
    log_repeat_sweep(client, exp, "big", [[100.0, 104.0, 97.0], [101.0, 98.0, 103.0]], warmups=[110.0, 108.0])
    small = log_repeat_sweep(client, exp, "small", [[60.0 + d, 62.0 + d, 59.0 + d] for d in (0, 1, -1, 2, 0)],
                             warmups=[65.0] * 5)
    reader = query.SourceReader(uri)
    data = reader.experiment_data("e")
    flagged = data["sweeps"][1]["rebound"]
    assert flagged["vs_name"] == "big" and data["within_noise"] == []
    noise = flagged["interval"]
    assert noise["outside"] is True
    assert noise["mean_change_ci"][0] < noise["mean_change"] < noise["mean_change_ci"][1] < 0
    assert 0 < noise["total_change_ci"][0] < noise["total_change"] < noise["total_change_ci"][1]
    # the J/run change is over measured runs (warm-ups out); the total's over every run
    assert noise["mean_change"] == pytest.approx((sum(60.0 + d + x for d in (0, 1, -1, 2, 0) for x in (0, 2, -1)) / 15)
                                                 / ((100 + 104 + 97 + 101 + 98 + 103) / 6) - 1)
    assert flagged["energy_j"] == pytest.approx(sum(60.0 + d + x for d in (0, 1, -1, 2, 0) for x in (0, 2, -1)) + 325)
    assert "95% CI" in flagged["label"] and flagged["note"] == "both changes outside their 95% intervals"
    sweep = reader.sweep_data("e", small.run_id)
    assert sweep["totals"]["runs"] == 20 and all(r["kind"] == "run" for r in sweep["runs"])


def test_reader_unknown_experiment(tracking):
    uri, client = tracking
    experiment_id(client, "e")
    with pytest.raises(query.NotFound):
        query.SourceReader(uri).experiment_data("no-such-experiment")


def test_environment_is_not_needed_for_reading(tracking, monkeypatch):
    """The reader uses only the URI it was given (not MLFLOW_TRACKING_URI)."""
    uri, client = tracking
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    exp = experiment_id(client, "e")
    s = log_sweep(client, exp, "grid", [1.0])
    assert query.SourceReader(uri).sweep_data("e", s.run_id)["totals"]["runs"] == 1
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9"
