"""Bad input to every magic and API argument: a clear error, and nothing logged half-way.

Through a real IPython shell and MLflow sqlite store; hardware seam: the replay sensor (flat
trace).  Most malformed arguments are already covered, and referenced from docs/reliability.md:

* tests/test_magics.py::test_bad_cell_arguments_raise_usage_error_and_log_nothing (BAD_CELL_ARGS:
  params without ``=``, empty keys, duplicated params, negative / NaN / huge / non-numeric units,
  ``--unit`` without ``--units``, bad ``-o``, empty names, unknown options)
* tests/test_magics.py::test_bad_line_arguments_raise_usage_error (BAD_LINE_ARGS: unknown command,
  missing names, bad ``--planned`` / ``--budget``, unknown sweep for ``chart``, ``end`` with nothing
  active, bad ``--timeout``, unbalanced quotes)
* tests/test_api.py::test_api_errors_are_clear_and_log_nothing (the Python API)
* tests/test_config.py (bad values and typos in the environment)

This file fills the gaps: unicode names that must work, control characters, names MLflow cannot
store, huge values, arguments that used to be checked only after something was logged, flush
timeouts, and configuration through ``%config``.
"""

from __future__ import annotations

import re
import threading

import pytest
from IPython.core.error import UsageError

import ipython_energy
from tests.helpers.mlflow_readback import runs, split_sweep


@pytest.fixture
def ip(open_shell, flat_trace, sqlite_uri):
    shell = open_shell(env={"IPYTHON_ENERGY_SENSORS": f"replay:{flat_trace}", "MLFLOW_TRACKING_URI": sqlite_uri},
                       warm=False)
    shell.user_ns.pop("ran", None)
    return shell


def nothing_logged(uri) -> None:
    """Nothing reached MLflow: every measurement that was made is there, and there is no run."""
    assert ipython_energy.flush(60)
    assert runs(uri)[1] == []


def test_unicode_names_work_and_round_trip_to_mlflow(ip, sqlite_uri):
    ip.run_line_magic("energy", "sweep 'résumé-Ω'")
    cell = "%%energy --run 'résumé-Ω run ✓' --param 'α=β γ' --param 'résumé-Ω=naïve' --param 'lr=1e-3'\npass"
    assert ip.run_cell(cell).success
    ip.run_line_magic("energy", "run 'ünïcode 运行' --param '温度=0.7'")
    assert ip.run_cell("%%energy\npass").success
    ip.run_line_magic("energy", "end run")
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(120)
    _, found = runs(sqlite_uri)
    sweeps, children = split_sweep(found)
    (sweep,) = sweeps
    assert sweep.info.run_name == "résumé-Ω" and sweep.data.tags["energy.sweep"] == "résumé-Ω"
    by_name = {c.info.run_name: c for c in children}
    assert set(by_name) == {"résumé-Ω run ✓", "ünïcode 运行"}
    first = by_name["résumé-Ω run ✓"]
    assert first.data.params == {"α": "β γ", "résumé-Ω": "naïve", "lr": "1e-3"}
    assert first.data.tags["energy.sweep"] == "résumé-Ω"
    assert first.data.tags["mlflow.parentRunId"] == sweep.info.run_id
    assert by_name["ünïcode 运行"].data.params == {"温度": "0.7"}
    assert sweep.data.metrics["sweep_runs_energy_j"] == sum(c.data.metrics["energy_j"] for c in children) or \
        sweep.data.metrics["sweep_runs_energy_j"] == pytest.approx(sum(c.data.metrics["energy_j"] for c in children),
                                                              rel=1e-12)


NAMES = ["it's", 'say "hi"', "back\\slash", "two  spaces", "x" * 250]


def test_quotes_backslashes_and_the_longest_name_work(ip, sqlite_uri):
    import shlex

    for name in NAMES:
        ip.run_line_magic("energy", f"sweep {shlex.quote(name)}")
        assert ip.run_cell(f"%%energy --quiet --run {shlex.quote(name)}\npass").success
        ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(120)
    _, found = runs(sqlite_uri)
    sweeps, children = split_sweep(found)
    assert sorted(s.info.run_name for s in sweeps) == sorted(NAMES)
    parents = {s.info.run_id: s.info.run_name for s in sweeps}
    assert sorted((c.info.run_name, parents[c.data.tags["mlflow.parentRunId"]]) for c in children) == \
        sorted((n, n) for n in NAMES)


CONTROL = ["bell\x07", "new\nline", "nul\x00x", "esc\x1b[31mred", "tab\tname"]
CONTROL_DEL_C1 = ["del\x7fx", "csi\x9b31m", "nel\x85x"]


def control_cases(names):
    for name in names:
        yield "cell", f"--run '{name}'"
        yield "cell", f"--sweep '{name}'"
        yield "cell", f"--param '{name}=1'"
        yield "line", f"sweep '{name}'"
        yield "line", f"run '{name}'"
        yield "line", f"run ok --param '{name}=1'"


def refused(ip, uri, cases, message: str) -> list[str]:
    """Run each (kind, args); return a description of every case that was not refused as it should be."""
    wrong = []
    for kind, args in cases:
        ip.user_ns.pop("ran", None)
        try:
            if kind == "cell":
                ip.run_cell_magic("energy", args, "ran = True")
            else:
                ip.run_line_magic("energy", args)
        except UsageError as exc:
            if not re.search(message, str(exc)):
                wrong.append(f"{kind} {args!r}: UsageError without {message!r}: {exc}")
        else:
            wrong.append(f"{kind} {args!r}: accepted")
        if "ran" in ip.user_ns:
            wrong.append(f"{kind} {args!r}: the cell ran")
        tracker = ipython_energy.tracker()
        if tracker.run is not None:  # a run that was wrongly started: end it for the next case
            tracker.end_run(tracker.run)
        if tracker.sweep is not None:
            wrong.append(f"{kind} {args!r}: left sweep {tracker.sweep.name!r} active")
            tracker.end_sweep()
    return wrong


def test_names_with_control_characters_are_rejected(ip, sqlite_uri):
    assert refused(ip, sqlite_uri, control_cases(CONTROL), "control characters") == []
    nothing_logged(sqlite_uri)


def test_names_with_del_and_c1_control_characters_are_rejected(ip, sqlite_uri):
    assert refused(ip, sqlite_uri, control_cases(CONTROL_DEL_C1), "control characters") == []
    nothing_logged(sqlite_uri)


def test_param_keys_mlflow_cannot_store_are_rejected_before_the_cell(ip, sqlite_uri):
    keys = ["<img src", "a;b", "x/../z", "/abs", "a//b", "semi;colon"]
    cases = [("cell", f"--param '{k}=1'") for k in keys] + [("line", f"run r --param '{k}=1'") for k in keys]
    assert refused(ip, sqlite_uri, cases, "param") == []
    nothing_logged(sqlite_uri)


HUGE_OR_BAD = [
    ("cell", "--units 1e19", "implausibly large"),
    ("cell", "--units inf", "positive finite"),
    ("cell", "--units 0", "positive"),
    ("cell", f"--run '{'x' * 251}'", "too long"),
    ("cell", f"--sweep '{'x' * 251}'", "too long"),
    ("cell", f"--param '{'k' * 251}=1'", "too long"),
    ("cell", f"--param k={'v' * 6001}", "too long"),
    ("cell", "--param k=1 --param ' k '=2", "twice"),
    ("cell", "--unit ''", "--units"),
    ("line", "sweep s --planned 100000000", "positive whole number"),
    ("line", "sweep s --planned 1e3", "whole number"),
    ("line", "sweep s --planned ''", "whole number"),
    ("line", "sweep s --budget 1e400J", "positive, finite"),
    ("line", "sweep s --budget inf", "not an energy"),
    ("line", "sweep s --budget ''", "not an energy"),
    ("line", "sweep s --budget 5kJ --budget 6kJ --planned x", "given twice"),
    ("line", f"run '{'x' * 251}'", "too long"),
    ("line", "run r --param =1", "must not be empty"),
    ("line", "run r --param a=1 --param a=1", "twice"),
    ("line", f"run r --param k={'v' * 6001}", "too long"),
    ("line", "flush --timeout 1e400", "positive finite"),
    ("line", "flush --timeout -1", "positive"),
    ("line", "flush --timeout soon", "number"),
    ("line", "autolog", "on or off"),
    ("line", "autolog on off", "on or off"),
    ("line", "chart a b", "at most one"),
    ("line", "end run sweep", "nothing, 'run' or 'sweep'"),
]


def test_huge_and_malformed_values_raise_usage_error_and_log_nothing(ip, sqlite_uri):
    wrong = []
    for kind, args, message in HUGE_OR_BAD:
        wrong += refused(ip, sqlite_uri, [(kind, args)], re.escape(message))
    assert wrong == []
    nothing_logged(sqlite_uri)


LONG = "k" * 1_000  # IPython's own $-expansion of a magic's line is quadratic: 10,000 costs ~2 s a line
LONG_VALUES = [
    ("cell", f"--param '{'k' * 10_000}=1'"),  # the reported case
    ("cell", f"--param '{LONG}'"),
    ("cell", f"--param 'a;{LONG}=1'"),
    ("cell", f"--param a=1 --param a={LONG}"),
    ("cell", f"--units {LONG}"),
    ("cell", f"--units 1 --unit 'a;{LONG}'"),
    ("cell", f"-o 1{LONG}"),
    ("cell", f"--run a --run {LONG}"),
    ("cell", f"--bogus{LONG}"),
    ("cell", f"stray {LONG}"),
    ("line", f"sweep s --planned {LONG}"),
    ("line", f"sweep s --budget {LONG}"),
    ("line", f"sweep s --budget 5{LONG}"),
    ("line", f"sweep s stray{LONG}"),
    ("line", f"flush --timeout {LONG}"),
    ("line", f"chart {LONG}"),
    ("line", LONG),
    ("line", f"run r --param '{LONG}=1'"),
    ("line", f"run r --param 'a/../{LONG}=1'"),
]


def test_a_huge_bad_value_is_quoted_short(ip, sqlite_uri):
    """Issue 13, item 8: a 10,000-character param key was echoed in a 10,068-character error.  Every
    message quotes at most ~80 characters of a value (validate.quote) and says how long it was.
    (Values of 1,000 characters but the first: each would be echoed whole, as that one was.)"""
    wrong = []
    for kind, args in LONG_VALUES:
        ip.user_ns.pop("ran", None)
        try:
            if kind == "cell":
                ip.run_cell_magic("energy", args, "ran = True")
            else:
                ip.run_line_magic("energy", args)
        except UsageError as exc:
            message = str(exc)
            if len(message) > 300 or "k" * 81 in message:
                wrong.append(f"{kind} {args[:30]!r}…: a {len(message)}-character message")
        else:
            wrong.append(f"{kind} {args[:30]!r}…: accepted")
        if "ran" in ip.user_ns:
            wrong.append(f"{kind} {args[:30]!r}…: the cell ran")
            tracker = ipython_energy.tracker()
            if tracker.run is not None:
                tracker.end_run(tracker.run)
    api = [lambda: ipython_energy.run("r", params={"a;" + LONG: 1}),
           lambda: ipython_energy.sweep("s", planned=LONG),
           lambda: ipython_energy.sweep("s", budget_j=LONG)]
    for call in api:
        with pytest.raises(ValueError) as caught:
            call()
        message = str(caught.value)
        assert len(message) <= 300 and "k" * 81 not in message and "characters" in message, message[:300]
    assert wrong == []
    nothing_logged(sqlite_uri)


REPEATED = [
    ("cell", "--run a --run b"),
    ("cell", "--sweep a --sweep b"),
    ("cell", "--units 1 --units 2"),
    ("cell", "--units 1 --unit a --unit b"),
    ("cell", "--units 1 --unit a --unit ''"),
    ("cell", "-o a -o b"),
    ("cell", "-o a --output b"),
    ("line", "sweep s --planned 3 --planned 4"),
    ("line", "sweep s --budget 1kJ --budget 2kJ"),
    ("line", "flush --timeout 1 --timeout 2"),
]


def test_a_single_value_option_given_twice_is_refused(ip, sqlite_uri):
    """Issue 13, item 8: ``--run a --run b`` silently took ``b`` (argparse keeps the last value).  Any
    option that takes one value, given twice, is a UsageError; nothing runs, nothing changes."""
    assert refused(ip, sqlite_uri, REPEATED, "given twice") == []
    nothing_logged(sqlite_uri)
    ip.run_line_magic("energy", "sweep kept --planned 3 --budget 1kJ")
    for line in ("sweep kept --planned 4 --planned 5", "sweep kept --budget 2kJ --budget 3kJ"):
        with pytest.raises(UsageError, match="given twice"):
            ip.run_line_magic("energy", line)
    sweep = ipython_energy.tracker().sweep
    assert (sweep.name, sweep.planned, sweep.budget_j) == ("kept", 3, 1000.0)
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(60)
    (parent,), _ = split_sweep(runs(sqlite_uri)[1])
    assert parent.data.tags["energy.planned"] == "3" and float(parent.data.tags["energy.budget_j"]) == 1000.0


def test_an_empty_unit_is_refused_not_taken_for_samples(ip, sqlite_uri):
    """Issue 13, item 8: ``--units 3 --unit ''`` silently logged ``units_samples``."""
    assert refused(ip, sqlite_uri, [("cell", "--units 3 --unit ''"), ("cell", "--units 3 --unit '  '")],
                   "unit name must not be empty") == []
    nothing_logged(sqlite_uri)


NEGATIVE = [
    ("line", "sweep s --budget -5kJ", "must be a positive"),
    ("line", "sweep s --budget -0.5Wh", "must be a positive"),
    ("line", "sweep s --budget -.5", "must be a positive"),
    ("cell", "--units -3e2", "positive"),
    ("line", "flush --timeout -1e3", "positive"),
]


def test_a_negative_value_is_read_and_refused_as_negative(ip, sqlite_uri):
    """Issue 13, item 8: ``--budget -5kJ`` said "expected one argument" (argparse took ``-5kJ`` for an
    option); the value is now read, and refused because it is not positive."""
    wrong = []
    for kind, args, message in NEGATIVE:
        wrong += refused(ip, sqlite_uri, [(kind, args)], re.escape(message))
    assert wrong == []
    nothing_logged(sqlite_uri)


BIDI = ["abc\u202egnp.exe", "lre\u202ax", "rle\u202bx", "pdf\u202cx", "lro\u202dx", "lri\u2066x",
        "rli\u2067x", "fsi\u2068x", "pdi\u2069x", "lrm\u200ex", "rlm\u200fx", "alm\u061cx"]


def test_names_with_bidirectional_controls_are_rejected(ip, sqlite_uri):
    """Issue 13, item 8: U+202E (right-to-left override) was accepted in names, which then display in
    another order than they are stored.  Sweep, run, stage, unit names and param keys refuse the
    bidirectional controls."""
    assert refused(ip, sqlite_uri, control_cases(BIDI), "bidirectional control characters") == []
    assert refused(ip, sqlite_uri, [("cell", "--units 1 --unit 'tok\u202ens'")], "bidirectional") == []
    for call in (lambda: ipython_energy.run("abc\u202egnp.exe"), lambda: ipython_energy.sweep("s\u2067x"),
                 lambda: ipython_energy.stage("st\u200fx"), lambda: ipython_energy.run(params={"k\u061c": 1})):
        with pytest.raises(ValueError, match="bidirectional control characters"):
            call()
    nothing_logged(sqlite_uri)
    # Text with right-to-left letters (no controls) is still a name.
    assert ip.run_cell("%%energy --quiet --run 'שלום-عالم'\npass").success
    assert ipython_energy.flush(60)
    assert [r.info.run_name for r in runs(sqlite_uri)[1]] == ["שלום-عالم"]


def test_bad_param_value_with_a_new_sweep_logs_nothing(ip, sqlite_uri):
    with pytest.raises(UsageError, match="too long"):
        ip.run_cell_magic("energy", f"--sweep fresh --param big={'v' * 6001}", "ran = True")
    assert "ran" not in ip.user_ns
    assert ipython_energy.tracker().sweep is None
    nothing_logged(sqlite_uri)


def test_api_gaps(open_shell, flat_trace, sqlite_uri):
    """API arguments not covered by tests/test_api.py: each raises a clear error, nothing is logged."""
    open_shell(env={"IPYTHON_ENERGY_SENSORS": f"replay:{flat_trace}", "MLFLOW_TRACKING_URI": sqlite_uri},
               warm=False)
    bad = [
        (lambda: ipython_energy.run(b"bytes"), ValueError, "string"),
        (lambda: ipython_energy.run(None, params={1: "a"}), ValueError, "param name must be a string"),
        (lambda: ipython_energy.run("r", params={"k": "v" * 6001}), ValueError, "too long"),
        (lambda: ipython_energy.run("bell\x07"), ValueError, "control characters"),
        (lambda: ipython_energy.sweep(None), ValueError, "string"),
        (lambda: ipython_energy.sweep("s", planned=10 ** 9), ValueError, "positive whole"),
        (lambda: ipython_energy.sweep("s", planned=True), ValueError, "positive whole"),
        (lambda: ipython_energy.sweep("s", budget_j="5kJ"), ValueError, "positive finite"),
        (lambda: ipython_energy.sweep("s", budget_j=float("inf")), ValueError, "positive finite"),
        (lambda: ipython_energy.stage(42), ValueError, "string"),
        (lambda: ipython_energy.stage(""), ValueError, "empty"),
    ]
    for call, error, message in bad:
        with pytest.raises(error, match=message):
            call()
    nothing_logged(sqlite_uri)


def test_flush_timeout_that_is_not_a_number_is_an_error_not_a_hang(open_shell, flat_trace, sqlite_uri):
    """NaN used to make flush wait forever while anything was pending (a dead backend here)."""
    open_shell(env={"IPYTHON_ENERGY_SENSORS": f"replay:{flat_trace}",
                    "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, warm=False)  # discard port: refused
    run = ipython_energy.run("pending")
    run.end()
    outcome = {}

    def call(timeout):
        try:
            outcome[repr(timeout)] = ipython_energy.flush(timeout)
        except (ValueError, TypeError) as exc:
            outcome[repr(timeout)] = exc

    for timeout in (float("nan"), "soon", 0.2, -1):
        t = threading.Thread(target=call, args=(timeout,), daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive(), f"flush({timeout!r}) hangs"
    assert isinstance(outcome["nan"], ValueError) and isinstance(outcome["'soon'"], ValueError)
    assert outcome["0.2"] is False and outcome["-1"] is False


# ---- configuration ----------------------------------------------------------------------------------

@pytest.fixture
def bare_shell(energy_home, flat_trace, sqlite_uri, monkeypatch, tmp_path):
    """A real shell without the extension; the test loads it with %load_ext."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.testing.globalipapp import start_ipython

    monkeypatch.setenv("IPYTHON_ENERGY_SENSORS", f"replay:{flat_trace}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    monkeypatch.chdir(tmp_path)
    start_ipython()
    shell = InteractiveShell.instance()
    shell.extension_manager.loaded.discard("ipython_energy")
    saved = shell.config.get("EnergyMagics")
    yield shell
    if "ipython_energy" in shell.extension_manager.loaded:
        shell.run_line_magic("unload_ext", "ipython_energy")
    # Whatever the test left (a failed load, autolog hooks, a tracker) must not reach later tests.
    ipython_energy.unload_ipython_extension(shell)
    shell.extension_manager.loaded.discard("ipython_energy")
    shell.config.pop("EnergyMagics", None)
    if saved is not None:
        shell.config.EnergyMagics = saved


def _our_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("ipython-energy")}


BAD_CONFIG = [
    ("interval_s = -1", "interval_s must be at least 0.005"),
    ("interval_s = 0", "interval_s must be at least"),
    ("interval_s = float('nan')", "interval_s must be a finite number"),
    ("interval_s = 1e9", "interval_s must be at most"),
    ("pue = 0.5", "pue must be at least 1"),
    ("live_interval_s = 0.01", "live_interval_s must be at least"),
    ("idle_power_w = -3", "idle_power_w must be at least 0"),
]


def _bad_config_then_load(shell, uri, setting, message) -> None:
    from ipython_energy import runtime

    before = _our_threads()
    shell.run_line_magic("config", f"EnergyMagics.{setting}")
    with pytest.raises(UsageError, match=message):
        shell.run_line_magic("load_ext", "ipython_energy")
    assert runtime.current() is None, setting
    assert not {t.name for t in _our_threads() - before}, f"{setting}: a failed load left threads running"
    assert "ipython_energy" not in shell.extension_manager.loaded
    # Fixed, it loads.
    shell.config.pop("EnergyMagics", None)
    shell.run_line_magic("load_ext", "ipython_energy")
    assert runtime.current() is not None
    shell.run_line_magic("unload_ext", "ipython_energy")
    assert runtime.current() is None


def test_bad_config_then_load_is_a_usage_error_and_starts_nothing(bare_shell, sqlite_uri):
    for setting, message in BAD_CONFIG:
        _bad_config_then_load(bare_shell, sqlite_uri, setting, message)
    assert runs(sqlite_uri)[1] == []  # nothing was ever logged


def test_unknown_sensor_in_config_then_load_is_a_usage_error(bare_shell, sqlite_uri):
    _bad_config_then_load(bare_shell, sqlite_uri, "sensors = 'gpu-please'", "unknown sensor")


def test_environment_typo_is_reported_at_load(bare_shell, capfd, monkeypatch):
    monkeypatch.setenv("IPYTHON_ENERGY_INTERVL_S", "0.2")
    bare_shell.run_line_magic("load_ext", "ipython_energy")
    err = capfd.readouterr().err
    assert "IPYTHON_ENERGY_INTERVL_S" in err and "did you mean 'IPYTHON_ENERGY_INTERVAL_S'" in err


def test_config_magic_typo_is_reported_at_load(bare_shell, capfd):
    bare_shell.run_line_magic("config", "EnergyMagics.intervl_s = 0.2")
    bare_shell.run_line_magic("load_ext", "ipython_energy")
    captured = capfd.readouterr()
    assert "intervl_s" in captured.err + captured.out and "interval_s" in captured.err + captured.out


def test_unload_with_autolog_on_stops_measuring(bare_shell, sqlite_uri):
    from ipython_energy import runtime

    bare_shell.run_line_magic("load_ext", "ipython_energy")
    bare_shell.run_line_magic("energy", "autolog on")
    assert bare_shell.run_cell("x = 1").success
    bare_shell.run_line_magic("unload_ext", "ipython_energy")
    before = _our_threads()
    assert bare_shell.run_cell("y = 2").success
    assert runtime.current() is None, "a cell after unload built a new tracker"
    assert not _our_threads() - before
