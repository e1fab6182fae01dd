"""Kernel faults with real Jupyter kernels (ipykernel through jupyter_client) running the magic.

Hardware seam: the replay sensor (flat trace: gpu0 100 W, cpu 20 W).  MLflow is a real sqlite
store or a real ``mlflow server``.  Referenced from docs/reliability.md and not repeated here:

* tests/test_kernel.py::test_kernel_sigkilled_mid_run_is_closed_killed_on_next_load
* tests/test_kernel.py::test_kernel_restart_closes_open_run_and_keeps_measurements
* tests/test_api.py::test_two_processes_write_one_sweep_sqlite / _server (two worker processes,
  Python API)
* tests/test_writer.py::test_in_doubt_replay_does_not_duplicate,
  test_unreachable_backend_spools_then_replays_once_in_next_kernel (writer level)

Added here: two kernels writing one sweep at once through the magic, and a kernel SIGKILLed while
the MLflow server is down, so that its measurements exist only in its journal.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.mlflow_readback import assert_sweep_total_exact, runs, split_sweep
from tests.helpers.net import listening_sockets

QUIET = {"IPYTHON_ENERGY_QUIET": "true"}


@pytest.mark.slow
def test_two_kernels_write_one_sweep_at_once_with_the_magic(start_kernel, flat_trace, sqlite_uri):
    kernels = [start_kernel(flat_trace, sqlite_uri, **QUIET) for _ in range(2)]
    listening_before = [listening_sockets(k.pid) for k in kernels]  # the kernels' own ZMQ ports
    for kernel in kernels:
        kernel.execute("%load_ext ipython_energy")
    # Both start the same sweep at the same moment, then run cells interleaved in time.
    starts = [kernel.submit("%energy sweep shared --planned 8") for kernel in kernels]
    for kernel, msg_id in zip(kernels, starts):
        kernel.wait(msg_id)
    pending = []
    for i in range(4):
        for name, kernel in zip("AB", kernels):
            pending.append((kernel, kernel.submit(f"%%energy --param kernel={name} --param i={i}\nimport time\n"
                                                  f"time.sleep(0.15)")))
    for kernel, msg_id in pending:
        kernel.wait(msg_id)
    for kernel in kernels:
        kernel.execute("%energy end")
    for kernel in kernels:
        assert "MLflow has every measurement" in kernel.execute("%energy flush --timeout 120", timeout_s=180)
    listening_after = [listening_sockets(k.pid) for k in kernels]
    assert listening_after == listening_before, "loading the extension opened a listening socket"

    client, found = runs(sqlite_uri)
    sweeps, children = split_sweep(found)
    assert [s.info.run_name for s in sweeps] == ["shared"], "one parent run for both kernels"
    (parent,) = sweeps
    names = sorted(c.info.run_name for c in children)
    assert names == sorted(f"kernel={k}, i={i}" for k in "AB" for i in range(4)), "each run exactly once"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    for child in children:
        points = client.get_metric_history(child.info.run_id, "cell_energy_j")
        assert len(points) == 1 and points[0].value == child.data.metrics["energy_j"]
        assert child.info.status == "FINISHED"
    assert_sweep_total_exact(client, parent, children)
    assert parent.data.tags["energy.planned"] == "8"
    assert sorted(int(c.data.tags["energy.run_index"]) for c in children) == list(range(1, 9)), \
        "run_index must number the runs 1..8 without repeats"


@pytest.mark.slow
@pytest.mark.server
def test_kernel_sigkilled_while_mlflow_is_down_loses_nothing(start_kernel, energy_home, flat_trace, mlflow_server):
    """The measurements exist only in the dead kernel's journal; the next kernel writes them once."""
    uri = mlflow_server.uri
    kernel = start_kernel(flat_trace, uri, **QUIET)
    kernel.execute("%load_ext ipython_energy")
    kernel.execute("%energy sweep doomed")
    kernel.execute("%%energy --param i=0\nimport time\ntime.sleep(0.1)")
    assert "every measurement" in kernel.execute("%energy flush --timeout 60", timeout_s=90)
    mlflow_server.kill()
    for i in range(1, 6):
        kernel.execute(f"%%energy --param i={i}\nimport time\ntime.sleep(0.1)")
    kernel.execute("%energy end")
    # The journal is written off the cell's path, within milliseconds (fsync included); only an
    # event submitted in the last few milliseconds before a SIGKILL can miss it.
    time.sleep(0.5)
    kernel.sigkill()

    mlflow_server.start()
    again = start_kernel(flat_trace, uri, **QUIET)
    again.execute("%load_ext ipython_energy")
    assert "every measurement" in again.execute("%energy flush --timeout 240", timeout_s=300)
    client, found = runs(uri)
    sweeps, children = split_sweep(found)
    assert [s.info.run_name for s in sweeps] == ["doomed"]
    assert sorted(c.info.run_name for c in children) == [f"i={i}" for i in range(6)]
    for child in children:
        assert child.info.status == "FINISHED"
        assert len(client.get_metric_history(child.info.run_id, "cell_energy_j")) == 1
    assert_sweep_total_exact(client, sweeps[0], children)
    assert sweeps[0].info.status == "FINISHED"  # the sweep_end was in the journal too
    assert not list((energy_home / "spool").glob("*.jsonl")) or all(
        '"i":"5"' not in j.read_text() for j in (energy_home / "spool").glob("*.jsonl")), "journal retired"
