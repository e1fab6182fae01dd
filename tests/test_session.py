"""The session's three parts (in runs, other cells, idle) in a real Jupyter kernel (jupyter_client).

Hardware seam: the replay sensor on a flat trace (gpu0 100 W + cpu 20 W = 120 W), so each part's
energy must be 120 W × the time spent in it.  Those times are measured independently of the
meter: by IPython hooks of the test's own in the kernel (when each cell executes), by the runs'
own durations, and by the client's sleeps between execute requests (idle).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers.waiting import wait_until

POWER_W = 120.0

TIMES = """
import time as _t
_cell_spans = []
def _pre(info):
    _cell_spans.append([_t.monotonic(), None])
def _post(result):
    if _cell_spans:  # this cell's own pre_run_cell came before the hook
        _cell_spans[-1][1] = _t.monotonic()
get_ipython().events.register("pre_run_cell", _pre)
get_ipython().events.register("post_run_cell", _post)
"""

START = """
import ipython_energy as energy
_s0, _t0 = energy.session(), _t.monotonic()
"""

SWEEP_CELL = """
_t.sleep(0.8)  # unmeasured work before the sweep
_in_runs = 0.0
with energy.sweep("grid"):
    for lr in (0.1, 0.01):
        with energy.run(params={"lr": lr}) as run:
            _t.sleep(0.6)
        _in_runs += run.measurement.duration_s
        _t.sleep(0.2)  # between runs, still in the cell
"""

REPORT = """
import json
_s1, _t1 = energy.session(), _t.monotonic()
_executing = sum(min(e if e is not None else _t1, _t1) - max(b, _t0) for b, e in _cell_spans
                 if (e is None or e > _t0) and b < _t1)
print("REPORT" + json.dumps({"s0": _s0, "s1": _s1, "wall": _t1 - _t0, "executing": _executing,
                             "in_runs": _in_runs}))
"""


def report(out: str) -> dict:
    line = next((x for x in out.splitlines() if x.startswith("REPORT")), None)
    assert line is not None, out
    return json.loads(line[len("REPORT"):])


def test_kernel_session_parts_are_power_times_time(start_kernel, energy_home, flat_trace, sqlite_uri):
    kernel = start_kernel(flat_trace, sqlite_uri)
    kernel.execute("%load_ext ipython_energy")
    kernel.execute(TIMES)
    kernel.execute(START)
    time.sleep(1.5)  # idle
    kernel.execute(SWEEP_CELL)  # a busy cell with Python-API runs: in runs + other cells
    time.sleep(1.5)  # idle
    kernel.execute("_t.sleep(1.0)")  # a busy unmeasured cell: other cells
    time.sleep(1.0)  # idle
    out = kernel.execute(REPORT)
    r = report(out)
    s0, s1 = r["s0"], r["s1"]
    d = {k: s1[k] - s0[k] for k in s1}
    # the parts add up to the total, in joules and in seconds
    assert d["in_runs_j"] + d["other_cells_j"] + d["idle_j"] == pytest.approx(d["total_j"], rel=1e-9)
    assert d["in_runs_s"] + d["other_cells_s"] + d["idle_s"] == pytest.approx(d["duration_s"], rel=1e-6)
    assert d["duration_s"] == pytest.approx(r["wall"], abs=0.01)
    # each part is power × the time spent in it (5 %)
    in_runs_s = r["in_runs"]
    other_s = r["executing"] - in_runs_s
    idle_s = r["wall"] - r["executing"]
    assert in_runs_s >= 1.2 and other_s >= 0.8 + 0.4 + 1.0 and idle_s >= 4.0  # what the cells and the client did
    assert d["in_runs_j"] == pytest.approx(POWER_W * in_runs_s, rel=0.05)
    assert d["other_cells_j"] == pytest.approx(POWER_W * other_s, rel=0.05)
    assert d["idle_j"] == pytest.approx(POWER_W * idle_s, rel=0.05)
    assert d["total_j"] == pytest.approx(POWER_W * r["wall"], rel=0.05)

    # %energy status and the live file show the same three parts
    status = kernel.execute("%energy")
    line = next(x for x in status.splitlines() if "this session:" in x)
    assert "in runs" in line and "other cells" in line and "idle" in line

    def live():
        files = list((energy_home / "live").glob("*.json"))
        data = json.loads(files[0].read_text()) if files else {}
        return data if data.get("duration_s", 0) > s1["duration_s"] else None

    data = wait_until(live, timeout_s=10, what="a live file written after the report")
    assert data["in_runs_j"] + data["other_cells_j"] + data["idle_j"] == pytest.approx(data["total_j"], rel=1e-9)
    assert data["in_runs_j"] >= s1["in_runs_j"] and data["other_cells_j"] >= s1["other_cells_j"]
    # the keys a sidebar of the previous version reads
    assert data["cells_j"] == data["in_runs_j"]
    assert data["between_cells_j"] == pytest.approx(data["other_cells_j"] + data["idle_j"], rel=1e-12)


def test_session_outside_ipython_counts_runs_and_idle(tmp_path, flat_trace, energy_home, sqlite_uri):
    """In a script (no IPython, no cells) other cells stay 0 and idle is the time outside runs."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(
        "import json, time\n"
        "import ipython_energy as energy\n"
        "s0 = energy.session()\n"
        "time.sleep(0.5)\n"
        "with energy.run('r') as run:\n"
        "    time.sleep(0.7)\n"
        "time.sleep(0.3)\n"
        "s1 = energy.session()\n"
        "print('REPORT' + json.dumps({'s0': s0, 's1': s1, 'run_s': run.measurement.duration_s}))\n")
    from tests.helpers.kernel import energy_env

    out = subprocess.run([sys.executable, str(script)], env=energy_env(energy_home, flat_trace, sqlite_uri),
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = report(out.stdout)
    s0, s1 = r["s0"], r["s1"]
    d = {k: s1[k] - s0[k] for k in s1}
    assert s1["other_cells_j"] == 0.0 and s1["other_cells_s"] == 0.0
    assert d["in_runs_s"] == pytest.approx(r["run_s"], abs=1e-3)
    assert d["in_runs_j"] == pytest.approx(POWER_W * r["run_s"], rel=0.05)
    assert d["idle_s"] == pytest.approx(d["duration_s"] - r["run_s"], abs=1e-3) and d["idle_s"] >= 0.8
    assert d["idle_j"] == pytest.approx(POWER_W * d["idle_s"], rel=0.05)
    assert s1["in_runs_j"] + s1["idle_j"] == pytest.approx(s1["total_j"], rel=1e-9)
