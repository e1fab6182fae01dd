"""``%%energy`` and ``%energy`` through a real IPython shell.

Hardware seam: the replay sensor plays a flat synthetic trace (gpu0 100 W, cpu 20 W), so the
expected joules are known; everything above it (sampler, windows, writer, MLflow sqlite) is real.
"""

from __future__ import annotations

import math
import os
import json
import subprocess
import sys
import textwrap

import pytest
from IPython.core.error import UsageError

import ipython_energy
from ipython_energy.measurement import Measurement, format_energy
from tests.helpers.mlflow_readback import history, runs as logged_runs, sweep_energy


def test_load_prints_sensors_and_methods(ip, capsys):
    out = capsys.readouterr().out
    assert "ipython-energy: sensors: gpu0 replay, cpu replay" in out
    assert "every 0.1 s" in out


def test_load_does_not_import_mlflow(energy_home, flat_trace):
    code = textwrap.dedent(f"""
        import os, sys, time
        os.environ["IPYTHON_ENERGY_SENSORS"] = "replay:{flat_trace}"
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "ipython_energy")
        print("MLFLOW_IMPORTED", "mlflow" in sys.modules, "ALTAIR", "altair" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "MLFLOW_IMPORTED False ALTAIR False" in out


def test_load_on_a_machine_without_sensors_prints_one_line(energy_home, tmp_path):
    """No NVML, no RAPL (this machine): one line on stdout says what is measured and how, and
    where the notes are; nothing on stderr (a08c2b1 printed each note as a red stderr line under
    the load line in every notebook).  ``%energy`` lists the notes.  The powercap root is pointed
    at an empty folder, as the sensors document; it is not taken for an unknown setting (a08c2b1
    warned that IPYTHON_ENERGY_RAPL_ROOT is unknown and ignored, while the RAPL sensor read it)."""
    code = textwrap.dedent("""
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "ipython_energy")
        print("STATUS-FOLLOWS")
        ip.run_line_magic("energy", "")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPYTHON_ENERGY_")}
    env.update(IPYTHON_ENERGY_HOME=str(energy_home), IPYTHON_ENERGY_SENSORS="auto",
               IPYTHON_ENERGY_RAPL_ROOT=str(tmp_path / "no-powercap"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db",
               PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    load, status = done.stdout.split("STATUS-FOLLOWS")
    assert [line for line in load.splitlines() if line.strip()] == [load.strip()]
    assert "cpu estimated" in load and ("notes: %energy" in load or "note: %energy" in load)
    assert done.stderr.strip() == "", done.stderr
    assert "note:" in status


def test_help_is_real(ip):
    doc = ip.find_cell_magic("energy").__doc__
    for option in ("--run", "--sweep", "--param", "--units", "--unit", "--quiet", "--no-log", "--live", "-o"):
        assert option in doc


def test_cell_measures_prints_and_hands_out_measurement(ip, capsys, sqlite_uri):
    result = ip.run_cell("%%energy -o m --param lr=0.1\nimport time\ntime.sleep(0.4)\n40 + 2")
    assert result.success and result.result == 42
    m = ip.user_ns["m"]
    assert isinstance(m, Measurement)
    # Replay trace: 120 W in total; the window is at least the 0.4 s sleep.
    assert m.duration_s >= 0.4
    assert m.energy_j == pytest.approx(120 * m.duration_s, rel=0.02)
    assert set(m.domains) == {"gpu0", "cpu"}
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("⚡"))
    assert "gpu0" in line and "replay" in line and "mean 120" in line
    assert ipython_energy.flush(120)
    client, runs = logged_runs(sqlite_uri)
    (run,) = runs
    assert run.data.params == {"lr": "0.1"}
    assert run.data.metrics["energy_j"] == pytest.approx(m.energy_j)
    assert run.data.metrics["cell_energy_j"] == pytest.approx(m.energy_j)
    assert run.data.tags["energy.methods"] == "gpu0=replay,cpu=replay"
    assert run.info.status == "FINISHED"


BAD_CELL_ARGS = [
    ("--param lr", "KEY=VALUE"),
    ("--param =3", "must not be empty"),
    ("--param a=1 --param a=2", "twice"),
    ("--units -3", "positive"),
    ("--units nan", "positive finite"),
    ("--units 1e400", "positive finite"),
    ("--units ten", "number"),
    ("--unit tokens", "--units"),
    ("-o 1abc", "Python name"),
    ("--run ''", "empty"),
    ("--sweep '  '", "empty"),
    ("--bogus", "unrecognized"),
    ("--units", "expected one argument"),
]


@pytest.mark.parametrize("args,message", BAD_CELL_ARGS)
def test_bad_cell_arguments_raise_usage_error_and_log_nothing(ip, args, message, sqlite_uri):
    with pytest.raises(UsageError, match=message):
        ip.run_cell_magic("energy", args, "ran = True")
    assert "ran" not in ip.user_ns  # the cell did not run
    assert ipython_energy.flush(60)
    assert logged_runs(sqlite_uri)[1] == []


BAD_LINE_ARGS = [
    ("bogus", "unknown command"),
    ("sweep", "required: name"),
    ("sweep s --planned -1", "positive whole number"),
    ("sweep s --planned 2.5", "whole number"),
    ("sweep s --budget '5 parsecs'", "unknown energy unit"),
    ("sweep s --budget -5kJ", "must be a positive"),
    ("sweep s --budget=-5kJ", "must be a positive"),
    ("sweep s --budget 0", "positive"),
    ("sweep s --budget nan", "not an energy"),
    ("sweep s --stop-at-budget", "needs --budget"),
    ("sweep ''", "empty"),
    ("run", "required: name"),
    ("run r --param x", "KEY=VALUE"),
    ("end", "no run or sweep"),
    ("end run", "no run is active"),
    ("end everything", "nothing, 'run' or 'sweep'"),
    ("autolog maybe", "on or off"),
    ("chart nosuch", "no sweep"),
    ("chart --by cpu", "invalid choice"),
    ("chart a b", "at most one"),
    ("flush --timeout nan", "positive finite"),
    ("sweep 'unclosed", "quotation"),
]


@pytest.mark.parametrize("line,message", BAD_LINE_ARGS)
def test_bad_line_arguments_raise_usage_error(ip, line, message, sqlite_uri):
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("energy", line)
    assert ipython_energy.flush(60)
    assert logged_runs(sqlite_uri)[1] == []


def test_user_exception_propagates_unchanged_and_run_is_failed(ip, sqlite_uri, capsys):
    result = ip.run_cell("%%energy --run flaky\nclass Boom(Exception): pass\nraise Boom('bad data')")
    assert type(result.error_in_exec).__name__ == "Boom"
    assert str(result.error_in_exec) == "bad data"
    assert "⚡" in capsys.readouterr().out  # the measurement is still reported
    assert ipython_energy.flush(120)
    _, (run,) = logged_runs(sqlite_uri)
    assert run.info.status == "FAILED"
    assert run.data.metrics["energy_j"] > 0


def test_keyboard_interrupt_marks_run_killed(ip, sqlite_uri):
    result = ip.run_cell("%%energy --run interrupted\nraise KeyboardInterrupt")
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert ipython_energy.flush(120)
    _, (run,) = logged_runs(sqlite_uri)
    assert run.info.status == "KILLED"
    assert run.data.metrics["energy_j"] > 0


def test_sweep_total_equals_sum_of_children_exactly(ip, sqlite_uri, capsys):
    ip.run_line_magic("energy", "sweep grid --planned 4 --budget 1kJ")
    for lr in ("0.1", "0.01", "0.001"):
        assert ip.run_cell(f"%%energy --param lr={lr}\nimport time\ntime.sleep(0.1)").success
    out = capsys.readouterr().out
    assert "sweep 'grid'" in out and "over 3 run(s)" in out and "forecast" in out
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(120)
    client, runs = logged_runs(sqlite_uri)
    parent = next(r for r in runs if r.data.tags["energy.kind"] == "sweep")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    # Runs one after another: the energy in runs is the sum of their energies, exactly; the sweep's
    # energy adds the time between them (docs/metrics.md, "Where a sweep's energy goes").
    assert parent.data.metrics["sweep_runs_energy_j"] == math.fsum(c.data.metrics["energy_j"] for c in children)
    assert parent.data.metrics["sweep_energy_j"] == sweep_energy(client, parent, children)[0]
    values = [m.value for m in history(client, parent.info.run_id, "sweep_energy_j")]
    assert values == sorted(values) and len(values) == 4  # one per run, and the time after the last
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.params["lr"] for c in children) == ["0.001", "0.01", "0.1"]


def test_budget_warns_and_can_stop_further_runs(ip, capsys):
    ip.run_line_magic("energy", "sweep tight --budget 10J --stop-at-budget")
    assert ip.run_cell("%%energy\nimport time\ntime.sleep(0.2)").success  # ~24 J > 10 J
    assert "OVER BUDGET" in capsys.readouterr().out
    with pytest.raises(UsageError, match="budget"):
        ip.run_cell_magic("energy", "", "ran_again = True")
    assert "ran_again" not in ip.user_ns


# ---- what a sweep counts (issue 13, item 7; docs/metrics.md, "What a sweep counts") -----------------

SLEEP = "import time\ntime.sleep(0.1)"


def sweep_and_children(uri):
    assert ipython_energy.flush(120)
    client, found = logged_runs(uri)
    (parent,) = [r for r in found if r.data.tags["energy.kind"] == "sweep"]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, children, found


def test_a_sweep_started_without_logging_logs_its_later_runs(ip, sqlite_uri, capsys, caplog):
    """Item 7a: the logged run of a sweep first started by a --no-log cell was refused ("MLflow refused
    a run_start event (LookupError …)"): the sweep's parent run had never been created."""
    assert ip.run_cell(f"%%energy --sweep q --no-log -o unlogged\n{SLEEP}").success
    ip.run_line_magic("energy", "sweep q --planned 4 --budget 1kJ")  # a logged start: MLflow is told now
    assert ip.run_cell(f"%%energy --sweep q -o logged\n{SLEEP}").success
    out = capsys.readouterr().out
    unlogged, logged = ip.user_ns["unlogged"].energy_j, ip.user_ns["logged"].energy_j
    assert "sweep 'q': " in out and "over 1 run(s) + " in out and "in 1 unlogged run(s)" in out
    ip.run_line_magic("energy", "end")
    client, parent, children, found = sweep_and_children(sqlite_uri)
    assert ipython_energy.tracker().writer.rejected == []
    assert not [r for r in caplog.records if "refused" in r.getMessage()]
    (child,) = children
    assert len(found) == 2
    assert child.data.metrics["energy_j"] == logged
    assert parent.data.metrics["sweep_runs_energy_j"] == logged and parent.data.metrics["sweep_runs"] == 1
    assert parent.data.tags["energy.planned"] == "4" and float(parent.data.tags["energy.budget_j"]) == 1000.0
    assert parent.info.status == "FINISHED"
    assert unlogged > 0


def test_a_sweep_whose_runs_are_all_unlogged_never_reaches_mlflow(ip, sqlite_uri, caplog):
    """Item 7a: ending such a sweep sent a sweep_end for a parent run MLflow never had (refused)."""
    assert ip.run_cell(f"%%energy --sweep quiet --no-log --quiet\n{SLEEP}").success
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(60)
    assert ipython_energy.tracker().writer_status() is None or ipython_energy.tracker().writer.rejected == []
    assert logged_runs(sqlite_uri)[1] == []


def test_a_run_opened_inside_the_active_run_is_counted_once(ip, sqlite_uri, capsys):
    """Item 7b: ``with ipython_energy.run(...)`` inside a cell of the active run was a second child of
    the sweep, its energy summed twice."""
    ip.run_line_magic("energy", "sweep nest")
    ip.run_line_magic("energy", "run outer")
    body = "import time, ipython_energy\ntime.sleep(0.1)\nwith ipython_energy.run('inner'):\n    time.sleep(0.2)"
    assert ip.run_cell(f"%%energy\n{body}").success
    ip.run_line_magic("energy", "end run")
    out = capsys.readouterr().out
    sweep = ipython_energy.tracker().sweeps["nest"]
    assert "sweep 'nest': " in out and "over 1 run(s)" in out and sweep.finished_runs == 1
    ip.run_line_magic("energy", "end")
    client, parent, children, found = sweep_and_children(sqlite_uri)
    by_name = {r.info.run_name: r for r in found}
    assert [c.info.run_name for c in children] == ["outer"]
    inner = by_name["inner"]
    assert inner.data.tags["mlflow.parentRunId"] == by_name["outer"].info.run_id
    assert inner.data.tags["energy.sweep"] == "nest" and inner.data.tags["energy.parent_run"] == "outer"
    outer_j = by_name["outer"].data.metrics["energy_j"]
    assert inner.data.metrics["energy_j"] < outer_j
    assert parent.data.metrics["sweep_runs_energy_j"] == outer_j
    assert parent.data.metrics["sweep_energy_j"] == sweep.total_j


def test_a_sweeps_new_plan_and_budget_reach_mlflow(ip, sqlite_uri, capsys):
    """Item 7c: ``%energy sweep s --planned 6`` after ``--planned 3`` changed the forecast in the
    session only; MLflow kept the old plan, budget and budget state."""
    ip.run_line_magic("energy", "sweep grid --planned 3 --budget 10J")
    for _ in range(2):
        assert ip.run_cell(f"%%energy --quiet\n{SLEEP}").success  # ~12 J each at 120 W: over 10 J
    sweep = ipython_energy.tracker().sweep
    assert sweep.over_budget
    capsys.readouterr()
    ip.run_line_magic("energy", "sweep grid --planned 6 --budget 1kJ")
    out = capsys.readouterr().out
    assert f"forecast {format_energy(sweep.total_j / 2 * 6)} for 6" in out and "budget 1 kJ" in out
    client, parent, children, _ = sweep_and_children(sqlite_uri)
    tags, metrics = parent.data.tags, parent.data.metrics
    assert tags["energy.planned"] == "6" and float(tags["energy.budget_j"]) == 1000.0
    assert tags["energy.budget_state"] == "ok"
    assert metrics["sweep_budget_j"] == 1000.0
    assert metrics["sweep_forecast_energy_j"] == sweep.forecast_j == sweep.total_j / 2 * 6
    # The runs after the change are forecast with the new plan too.
    assert ip.run_cell(f"%%energy --quiet\n{SLEEP}").success
    ip.run_line_magic("energy", "end")
    client, parent, children, _ = sweep_and_children(sqlite_uri)
    assert len(children) == 3
    assert parent.data.metrics["sweep_forecast_energy_j"] == sweep.forecast_j == sweep.total_j / 3 * 6
    assert parent.data.metrics["sweep_energy_j"] == sweep.total_j


def test_unlogged_cells_stay_out_of_the_sweeps_total(ip, sqlite_uri, capsys):
    """Item 7d: --no-log cells in an active sweep were counted in the total the user was shown
    (84 J over 4 runs shown, 40 J over 2 in MLflow).  Now they are shown apart."""
    ip.run_line_magic("energy", "sweep mixed")
    measured = []
    for i, flags in enumerate(["", "--no-log", "", "--no-log"]):
        assert ip.run_cell(f"%%energy {flags} -o m{i}\n{SLEEP}").success
        measured.append(ip.user_ns[f"m{i}"].energy_j)
    last = [line for line in capsys.readouterr().out.splitlines() if line.startswith("⚡")][-1]
    sweep = ipython_energy.tracker().sweep
    logged, unlogged = math.fsum(measured[0::2]), math.fsum(measured[1::2])
    # The logged runs' energies are the energy in runs; the sweep's total adds the time between them.
    assert sweep.ledger.runs_j == pytest.approx(logged, rel=1e-12) and sweep.finished_runs == 2
    assert sweep.unlogged_j == unlogged and sweep.unlogged_runs == 2
    assert f"sweep 'mixed': {format_energy(sweep.total_j)} over 2 run(s) + {format_energy(unlogged)} " \
           "in 2 unlogged run(s)" in last
    assert "not logged" in last  # the last cell itself was not logged
    ip.run_line_magic("energy", "")
    assert "over 2 run(s) + " in capsys.readouterr().out
    live = ipython_energy.tracker().live_state()["active_sweep"]
    assert (live["total_j"], live["runs"], live["unlogged_runs"]) == (sweep.total_j, 2, 2)
    ip.run_line_magic("energy", "end")
    client, parent, children, _ = sweep_and_children(sqlite_uri)
    assert len(children) == 2
    assert parent.data.metrics["sweep_runs_energy_j"] == logged and parent.data.metrics["sweep_runs"] == 2
    assert sorted(c.data.metrics["energy_j"] for c in children) == sorted(measured[0::2])


def test_explicit_run_collects_cells_with_execution_count_steps(ip, sqlite_uri):
    ip.run_line_magic("energy", "run training --param epochs=2")
    counts = []
    for _ in range(2):
        counts.append(ip.execution_count)
        assert ip.run_cell("%%energy\nsum(range(1000))").success
    with pytest.raises(UsageError, match="already running"):
        ip.run_cell_magic("energy", "--param lr=1", "pass")
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(120)
    client, (run,) = logged_runs(sqlite_uri)
    assert run.data.params == {"epochs": "2"}
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "cell_energy_j"))
    assert steps == counts
    # The run covers the time between its cells too, so it holds at least its cells' energy.
    cells = sum(m.value for m in client.get_metric_history(run.info.run_id, "cell_energy_j"))
    assert run.data.metrics["energy_j"] >= cells


def test_units_give_joules_per_unit(ip, sqlite_uri):
    assert ip.run_cell("%%energy -o m --units 200 --unit tokens\nimport time\ntime.sleep(0.2)").success
    assert ipython_energy.flush(120)
    _, (run,) = logged_runs(sqlite_uri)
    assert run.data.metrics["units_tokens"] == 200
    assert run.data.metrics["energy_per_tokens_j"] == pytest.approx(ip.user_ns["m"].energy_j / 200)
    assert run.data.tags["energy.unit"] == "tokens"


def test_quiet_and_no_log(ip, capsys, sqlite_uri):
    assert ip.run_cell("%%energy --quiet --no-log -o q\npass").success
    assert "⚡" not in capsys.readouterr().out
    assert isinstance(ip.user_ns["q"], Measurement)
    assert ipython_energy.flush(60)
    assert logged_runs(sqlite_uri)[1] == []


def test_autolog_measures_every_cell_into_the_active_run(ip, sqlite_uri, capsys):
    ip.run_line_magic("energy", "run notebook")
    ip.run_line_magic("energy", "autolog on")
    counts = []
    for _ in range(3):
        counts.append(ip.execution_count)
        assert ip.run_cell("x = sum(range(10000))").success
    ip.run_line_magic("energy", "autolog off")
    assert ip.run_cell("y = 1").success  # not measured
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(120)
    client, (run,) = logged_runs(sqlite_uri)
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "cell_energy_j"))
    assert steps == counts
    assert capsys.readouterr().out.count("⚡") >= 3


def test_status_line_magic(ip, capsys):
    ip.run_line_magic("energy", "")
    out = capsys.readouterr().out
    assert "gpu0: replay" in out and "W now" in out and "run: none" in out
    # A logging session says where it logs, and only that (a merge once printed "logging off" too).
    assert "MLflow: sqlite:///" in out and "logging off" not in out


def test_stage_inside_magic_run_and_chart(ip, sqlite_uri):
    ip.run_line_magic("energy", "sweep staged")
    src = ("%%energy --param n=1\nimport time, ipython_energy as e\n"
           "with e.stage('data'):\n    time.sleep(0.1)\nwith e.stage('forward'):\n    time.sleep(0.2)")
    assert ip.run_cell(src).success
    assert ipython_energy.flush(120)
    _, runs = logged_runs(sqlite_uri)
    child = next(r for r in runs if r.data.tags["energy.kind"] == "run")
    metrics = child.data.metrics
    for stage, slept_s in (("data", 0.1), ("forward", 0.2)):
        assert metrics[f"stage_{stage}_duration_s"] >= slept_s
        # The trace is a flat 120 W: a stage's joules are 120 W times its own duration.
        assert metrics[f"stage_{stage}_energy_j"] == pytest.approx(120 * metrics[f"stage_{stage}_duration_s"],
                                                                   rel=0.02)
    assert child.data.metrics["stage_data_energy_j"] + child.data.metrics["stage_forward_energy_j"] \
        <= child.data.metrics["energy_j"]


def test_chart_inline_and_artifact_on_the_sweep(ip, sqlite_uri):
    ip.run_line_magic("energy", "sweep charted --planned 3")
    for n in (1, 2):
        assert ip.run_cell(f"%%energy --param n={n} --quiet\nimport time\ntime.sleep(0.05 * {n})").success
    chart = ip.run_line_magic("energy", "chart")
    spec = chart.to_dict()
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/v5")
    values = [row for ds in spec.get("datasets", {}).values() for row in ds]
    assert {"n=1", "n=2"} <= {row.get("name") for row in values}
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(120)
    client, runs = logged_runs(sqlite_uri)
    parent = next(r for r in runs if r.data.tags["energy.kind"] == "sweep")
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "energy_sweep.html" in artifacts


def test_repeated_and_expanded_lines_give_each_cell_its_own_arguments(ip, sqlite_uri):
    """A line seen before is not parsed again; each cell still gets exactly what its line says."""
    for lr in ("0.1", "0.2", "0.1"):  # {lr} is expanded by IPython before the magic sees the line
        ip.user_ns["lr"] = lr
        assert ip.run_cell("%%energy --quiet -o m --param lr={lr} --units 10 --unit tokens\npass").success
    assert ip.run_cell("%%energy --quiet -o m2 --param lr=0.3\npass").success
    assert ip.user_ns["m"] is not ip.user_ns["m2"]
    assert ipython_energy.flush(120)
    _, runs = logged_runs(sqlite_uri)
    assert sorted(r.data.params["lr"] for r in runs) == ["0.1", "0.1", "0.2", "0.3"]
    assert [r.data.metrics.get("units_tokens") for r in runs].count(10) == 3
    assert all(r.data.params == {"lr": r.data.params["lr"]} for r in runs)  # no param leaked between cells


@pytest.mark.parametrize("args,message", BAD_CELL_ARGS[:4] + BAD_CELL_ARGS[-2:])
def test_a_bad_line_is_rejected_every_time(ip, args, message):
    for _ in range(3):
        with pytest.raises(UsageError, match=message):
            ip.run_cell_magic("energy", args, "ran = True")
    assert "ran" not in ip.user_ns


def test_a_param_value_mlflow_cannot_store_is_refused_every_time_after_the_run_check(ip, sqlite_uri):
    line = "--quiet --param note=" + "x" * 6001
    for _ in range(2):
        with pytest.raises(UsageError, match="too long for MLflow"):
            ip.run_cell_magic("energy", line, "ran = True")
    ip.run_line_magic("energy", "run training")
    with pytest.raises(UsageError, match="already running"):  # the run check comes first, as it did
        ip.run_cell_magic("energy", line, "ran = True")
    ip.run_line_magic("energy", "end")
    assert "ran" not in ip.user_ns
    assert ipython_energy.flush(60)
    _, runs = logged_runs(sqlite_uri)
    assert [r.data.tags["mlflow.runName"] for r in runs] == ["training"]


def test_state_checks_are_made_per_cell_for_a_repeated_line(ip):
    """Only the line's own parse is reused: --param with a run active is refused when it is."""
    assert ip.run_cell("%%energy --quiet --no-log --param lr=1\npass").success
    ip.run_line_magic("energy", "run training")
    with pytest.raises(UsageError, match="already running"):
        ip.run_cell_magic("energy", "--quiet --no-log --param lr=1", "ran = True")
    ip.run_line_magic("energy", "end")
    assert "ran" not in ip.user_ns
    assert ip.run_cell("%%energy --quiet --no-log --param lr=1\npass").success


def test_many_distinct_lines_keep_a_bounded_parse_cache(ip):
    from ipython_energy.magics import CELL_ARGS_CACHED

    magics = ip.magics_manager.registry["EnergyMagics"]
    for i in range(CELL_ARGS_CACHED + 20):
        ip.run_cell_magic("energy", f"--quiet --no-log -o m{i}", "pass")
    assert isinstance(ip.user_ns[f"m{CELL_ARGS_CACHED + 19}"], Measurement)
    assert len(magics._cell_args) == CELL_ARGS_CACHED
    ip.run_cell_magic("energy", "--quiet --no-log -o m0", "pass")  # dropped earlier: parsed again
    assert isinstance(ip.user_ns["m0"], Measurement)


def test_a_cells_own_run_is_journaled_as_start_and_end_with_the_cells_rows(ip, sqlite_uri, energy_home):
    ip.user_ns["counts"] = counts = []  # each cell notes the execution count it runs under
    for _ in range(3):
        src = "%%energy --quiet --units 8\ncounts.append(get_ipython().execution_count)"
        assert ip.run_cell(src, store_history=True).success
    assert ipython_energy.flush(120)
    tracker = ipython_energy.tracker()
    events = [json.loads(line) for line in (energy_home / "spool" / f"{tracker.session}.jsonl").read_text().splitlines()]
    kinds = [e.get("type") for e in events if "type" in e]
    assert kinds == ["run_start", "run_end"] * 3  # the cell's rows travel with the run's end
    client, runs = logged_runs(sqlite_uri)
    assert len(runs) == 3
    for run in runs:
        (point,) = client.get_metric_history(run.info.run_id, "cell_energy_j")
        assert point.value == run.data.metrics["energy_j"]
        for key in ("cell_duration_s", "cell_power_mean_w", "cell_power_peak_w"):
            assert len(client.get_metric_history(run.info.run_id, key)) == 1
        assert run.data.metrics["units_samples"] == 8
        assert run.info.status == "FINISHED"
    assert len(set(counts)) == 3
    assert sorted(client.get_metric_history(r.info.run_id, "cell_energy_j")[0].step for r in runs) == counts


def test_a_run_opened_inside_the_cell_takes_the_place_of_the_cells_own(ip, sqlite_uri):
    src = ("%%energy --quiet -o m\nimport time, ipython_energy as e\n"
           "with e.run('inner', params={'k': 1}):\n    time.sleep(0.05)")
    assert ip.run_cell(src).success
    assert isinstance(ip.user_ns["m"], Measurement)
    assert ipython_energy.flush(120)
    _, runs = logged_runs(sqlite_uri)
    assert [r.data.tags["mlflow.runName"] for r in runs] == ["inner"]  # the cell's own run is deleted
    assert runs[0].data.params == {"k": "1"}


BODIES = [
    ("x = 20\nx + 1", 21),                             # plain Python
    ("  y = 3\n  y * 2", 6),                           # indented: IPython dedents it
    (">>> z = 4\n>>> z + 1", 5),                       # a pasted prompt: IPython strips it
    ("w = %time 5\nw", 5),                             # a magic assignment
    ("v = !echo hi\nv[0]", "hi"),                      # a shell escape
    ("u = 7 % 4\nu", 3),                               # a '%' that is Python's
    ("\n\nt = 1\nt", 1),                               # leading empty lines
]


@pytest.mark.parametrize("body, value", BODIES)
def test_cell_body_runs_as_a_plain_cell_would(ip, body, value):
    assert ip.run_cell(body + "\n").result == value  # the reference: the same body without the magic
    assert ip.run_cell_magic("energy", "--quiet --no-log", body) == value


def test_input_transformers_added_by_the_user_apply_to_the_body(ip):
    """The body goes through IPython's input transforms, whatever they are, as under %%time."""
    def seven(lines):
        return [line.replace("SEVEN", "7") for line in lines]

    ip.input_transformers_post.append(seven)
    try:
        assert ip.run_cell("c = SEVEN\nc").result == 7
        assert ip.run_cell_magic("energy", "--quiet --no-log", "c = SEVEN\nc") == 7
    finally:
        ip.input_transformers_post.remove(seven)


def test_syntax_error_in_the_body_is_raised_as_ipython_would(ip):
    body = "def broken(:\n    pass"
    usual = ip.run_cell(body).error_before_exec
    with pytest.raises(SyntaxError) as measured:
        ip.run_cell_magic("energy", "--quiet --no-log", body)
    assert isinstance(usual, SyntaxError)
    assert (measured.value.msg, measured.value.lineno) == (usual.msg, usual.lineno)
