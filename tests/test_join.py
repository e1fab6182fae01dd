"""Processes that join one sweep: by the ``sweep`` setting (``IPYTHON_ENERGY_SWEEP``, as a launcher
hands it to its workers), by ``energy.sweep(RUN_ID)`` and by ``%energy sweep RUN_ID``.

Hardware seam: the replay sensor (flat 100 W + 20 W trace).  The workers are real Python
processes, each with its own IPYTHON_ENERGY_HOME (as on separate machines), writing one real
MLflow sqlite store; the magic runs in a real IPython shell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from IPython.core.error import UsageError

from ipython_energy.config import from_env
from ipython_energy.runs import EnergyError
from ipython_energy.runtime import new_tracker
from tests.helpers.mlflow_readback import assert_sweep_total_exact, history, runs, split_sweep

#: A launcher's worker as small as it can be: no sweep, no flush; the sweep comes from the
#: environment, and the process leaves it when it exits.
WORKER = textwrap.dedent("""
    import sys, time
    import ipython_energy as energy

    for i in range(int(sys.argv[1])):
        with energy.run("trial", params={"worker": sys.argv[2], "i": i}):
            time.sleep(0.2)
""")


def _start(tmp_path, name, trace, uri, *args, script=WORKER, **env):
    """A worker process with its own IPYTHON_ENERGY_HOME (``tmp_path/name``)."""
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    full = {k: v for k, v in os.environ.items() if not k.startswith(("IPYTHON_ENERGY_", "MLFLOW_"))}
    full.update({"IPYTHON_ENERGY_HOME": str(tmp_path / f"home-{name}"), "IPYTHON_ENERGY_SENSORS": f"replay:{trace}",
                 "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
                 "PYTHONPATH": os.pathsep.join(sys.path), **env})
    return subprocess.Popen([sys.executable, str(path), *args], env=full, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout_s=300):
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, err
    return out


def _the_sweep(uri, experiment="ipython-energy"):
    client, found = runs(uri, experiment)
    sweeps, children = split_sweep(found)
    assert len(sweeps) == 1, [s.data.tags.get("energy.sweep") for s in sweeps]
    return client, sweeps[0], children


def test_workers_given_the_sweep_in_the_environment_land_in_one_sweep(energy_home, flat_trace, sqlite_uri,
                                                                      tmp_path):
    """Two worker processes started with ``IPYTHON_ENERGY_SWEEP=launch``, 3 runs each: one parent,
    six children under it, each process's runs tagged with its pid, the parent closed by the
    last of them to exit, and the total exact."""
    started = time.monotonic()
    procs = [_start(tmp_path, f"w{i}", flat_trace, sqlite_uri, "3", str(i), IPYTHON_ENERGY_SWEEP="launch")
             for i in range(2)]
    pids = {str(p.pid) for p in procs}
    for proc in procs:
        _finish(proc)
    print(f"FIGURE two workers of 3 runs each, started to exited: {time.monotonic() - started:.1f} s")

    client, parent, children = _the_sweep(sqlite_uri)
    assert parent.data.tags["energy.sweep"] == "launch"
    assert len(children) == 6
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert {c.data.tags["energy.pid"] for c in children} == pids
    assert {c.data.tags["energy.thread"] for c in children} == {"MainThread"}
    assert sorted(int(c.data.tags["energy.run_index"]) for c in children) == list(range(1, 7))
    assert all(c.info.status == "FINISHED" for c in children)
    members = {k: v for k, v in parent.data.tags.items() if k.startswith("energy.member.")}
    assert sorted(members.values()) == ["FINISHED", "FINISHED"], "each process joined once and left at exit"
    assert parent.info.status == "FINISHED", "the last member to leave closed the parent"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["energy_sweep.html"], \
        "the closing member saved the chart"
    assert_sweep_total_exact(client, parent, children)
    points = history(client, parent.info.run_id, "sweep_energy_j")
    # One point per finished run, and one per member leaving (at the step it left at).
    assert len(points) == 6 + 2 and len({(p.step, p.value) for p in points}) == len(points)


def test_a_sweep_is_joined_by_its_run_id_from_the_api_and_the_environment(energy_home, flat_trace, sqlite_uri,
                                                                         tmp_path):
    """A sweep made in experiment ``elsewhere``; two processes configured for the default
    experiment join it by its parent's run id, one with ``energy.sweep(RUN_ID)``, one with
    ``IPYTHON_ENERGY_SWEEP=RUN_ID``: their runs are its children, in its experiment, under its name."""
    first = _start(tmp_path, "first", flat_trace, sqlite_uri, "1", "first", IPYTHON_ENERGY_SWEEP="by id",
                   MLFLOW_EXPERIMENT_NAME="elsewhere")
    _finish(first)
    client, parent, _ = _the_sweep(sqlite_uri, "elsewhere")
    run_id = parent.info.run_id

    api = textwrap.dedent("""
        import sys, time
        import ipython_energy as energy

        with energy.sweep(sys.argv[1]) as sweep:
            print("NAME", sweep.name)
            with energy.run("by api"):
                time.sleep(0.2)
    """)
    procs = [_start(tmp_path, "api", flat_trace, sqlite_uri, run_id, script=api),
             _start(tmp_path, "env", flat_trace, sqlite_uri, "1", "env", IPYTHON_ENERGY_SWEEP=run_id)]
    assert "NAME by id" in _finish(procs[0])
    _finish(procs[1])

    client, parent, children = _the_sweep(sqlite_uri, "elsewhere")
    assert parent.info.run_id == run_id
    assert sorted(c.info.run_name for c in children) == ["by api", "trial", "trial"]
    assert {c.data.tags["energy.sweep"] for c in children} == {"by id"}
    assert len([k for k in parent.data.tags if k.startswith("energy.member.")]) == 3
    assert parent.info.status == "FINISHED"
    assert_sweep_total_exact(client, parent, children)
    assert runs(sqlite_uri)[1] == [], "nothing in the configured experiment"


def _tracker(flat_trace, sqlite_uri, **values):
    config, _ = from_env({"IPYTHON_ENERGY_SENSORS": f"replay:{flat_trace}"})
    return new_tracker(config.with_values(tracking_uri=sqlite_uri, **values), register=False)


def test_a_run_id_no_run_has_is_a_name_and_one_that_cannot_be_looked_up_is_a_clear_error(
        energy_home, flat_trace, sqlite_uri):
    tracker = _tracker(flat_trace, sqlite_uri, log=True)
    try:
        made_up = "0123456789abcdef" * 2
        assert tracker.start_sweep(made_up).name == made_up
    finally:
        tracker.close()
    down = _tracker(flat_trace, "http://127.0.0.1:9", sweep="f" * 32, mlflow_timeout_s=2.0)
    try:
        with pytest.raises(EnergyError, match=r"cannot join the sweep of MLflow run f{32} at http://127\.0\.0\.1:9"):
            down.start_sweep("f" * 32)
        # The setting is never worth a user's run: the run is measured outside the sweep, once warned.
        with pytest.warns(RuntimeWarning, match="the sweep setting is ignored"):
            run = down.start_run("measured anyway", log=False)
        assert run.sweep is None
        run.end()
    finally:
        down.close(timeout_s=0.1)


def test_magic_joins_a_sweep_by_run_id(ip, flat_trace, sqlite_uri, tmp_path, capsys):
    """``%energy sweep RUN_ID`` joins another process's sweep under its name; a run id of a run
    that is not a sweep is a UsageError."""
    _finish(_start(tmp_path, "first", flat_trace, sqlite_uri, "1", "first", IPYTHON_ENERGY_SWEEP="from a launcher"))
    _client, parent, (child,) = _the_sweep(sqlite_uri)
    ip.run_line_magic("energy", f"sweep {parent.info.run_id}")
    assert "sweep 'from a launcher'" in capsys.readouterr().out
    ip.run_cell_magic("energy", "--run notebook", "pass")
    with pytest.raises(UsageError, match="is not the parent run of a sweep"):
        ip.run_line_magic("energy", f"sweep {child.info.run_id}")
    ip.run_line_magic("energy", "end sweep")
    ip.run_line_magic("energy", "flush")
    client, parent, children = _the_sweep(sqlite_uri)
    assert sorted(c.info.run_name for c in children) == ["notebook", "trial"]
    assert parent.info.status == "FINISHED"
    assert_sweep_total_exact(client, parent, children)


def test_the_summary_of_a_joined_sweep_counts_every_member(ip, flat_trace, sqlite_uri, tmp_path, capsys):
    """A worker process ran two runs of ``shared``; this shell joins it and runs one.  Its own
    figures stay its own (1 run), and once its writer has recounted the sweep from MLflow the
    summary adds what every member contributed: 3 runs from 1 host and 2 processes."""
    _finish(_start(tmp_path, "worker", flat_trace, sqlite_uri, "2", "w", IPYTHON_ENERGY_SWEEP="shared"))
    ip.run_line_magic("energy", "sweep shared")
    ip.run_cell_magic("energy", "--run notebook", "pass")
    ip.run_line_magic("energy", "flush")
    capsys.readouterr()
    ip.run_line_magic("energy", "")
    out = capsys.readouterr().out
    assert "sweep 'shared':" in out and "over 1 run(s)" in out, out
    assert "all members in MLflow:" in out and "over 3 run(s) from 1 host(s), 2 process(es)" in out, out
    # Other processes joined, so the chart is the whole sweep from MLflow, not this shell's one run.
    spec = ip.run_line_magic("energy", "chart").to_dict()
    assert sorted(r["name"] for r in spec["datasets"]["runs"]) == ["notebook", "trial", "trial"]
    by_host = ip.run_line_magic("energy", "chart shared --mlflow --by host").to_dict()
    (panel_rows,) = {json.dumps(layer["data"]["values"]) for layer in by_host["vconcat"][1]["layer"]}
    assert [(h["runs"], h["processes"]) for h in json.loads(panel_rows)] == [(3, 2)]
    with pytest.raises(UsageError, match="no sweep named 'elsewhere'"):
        ip.run_line_magic("energy", "chart elsewhere")
    ip.run_line_magic("energy", "end sweep")
    ip.run_line_magic("energy", "flush")
    client, parent, children = _the_sweep(sqlite_uri)
    assert len(children) == 3
    assert_sweep_total_exact(client, parent, children)
