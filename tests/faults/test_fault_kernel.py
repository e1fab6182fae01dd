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

import os
import signal
import sys
import time

import pytest
from jupyter_client.manager import KernelManager

from faultkit import assert_sweep_total_exact, mlflow_runs, split_sweep
from test_fault_security import _listening_inodes


def create_store(uri: str) -> None:
    """Make a sqlite store before the kernels (this process reads it while they write)."""
    if uri.startswith("sqlite:"):
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).search_experiments(max_results=1)


def start_kernel(tmp_path, energy_home, trace, uri):
    env = dict(os.environ)
    env.update({"IPYTHON_ENERGY_HOME": str(energy_home), "IPYTHON_ENERGY_SENSORS": f"replay:{trace}",
                "MLFLOW_TRACKING_URI": uri, "IPYTHON_ENERGY_QUIET": "true",
                "PYTHONPATH": os.pathsep.join(sys.path)})
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def kernel_pid(km) -> int:
    return km.provisioner.pid if hasattr(km.provisioner, "pid") else km.kernel.pid


def wait_reply(kc, msg_id: str, timeout: float = 120) -> str:
    """Wait until ``msg_id`` is done; return its stdout; raise on an error."""
    out = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise AssertionError("\n".join(msg["content"]["traceback"]))
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out)


def execute(kc, code: str, timeout: float = 120) -> str:
    return wait_reply(kc, kc.execute(code), timeout)


@pytest.fixture
def kernels():
    started = []
    yield started
    for km, kc in started:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.slow
def test_two_kernels_write_one_sweep_at_once_with_the_magic(tmp_path, energy_home, flat_trace, sqlite_uri, kernels):
    create_store(sqlite_uri)
    for _ in range(2):
        kernels.append(start_kernel(tmp_path, energy_home, flat_trace, sqlite_uri))
    pids = [kernel_pid(km) for km, _ in kernels]
    listening_before = [_listening_inodes(pid) for pid in pids]  # the kernels' own ZMQ ports
    for _, kc in kernels:
        execute(kc, "%load_ext ipython_energy")
    # Both start the same sweep at the same moment, then run cells interleaved in time.
    starts = [kc.execute("%energy sweep shared --planned 8") for _, kc in kernels]
    for (_, kc), msg_id in zip(kernels, starts):
        wait_reply(kc, msg_id)
    pending = []
    for i in range(4):
        for name, (_, kc) in zip("AB", kernels):
            pending.append((kc, kc.execute(f"%%energy --param kernel={name} --param i={i}\nimport time\n"
                                           f"time.sleep(0.15)")))
    for kc, msg_id in pending:
        wait_reply(kc, msg_id)
    for _, kc in kernels:
        execute(kc, "%energy end")
    for _, kc in kernels:
        assert "MLflow has every measurement" in execute(kc, "%energy flush --timeout 120", timeout=180)
    listening_after = [_listening_inodes(pid) for pid in pids]
    assert listening_after == listening_before, "loading the extension opened a listening socket"

    client, runs = mlflow_runs(sqlite_uri)
    sweeps, children = split_sweep(runs)
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
def test_kernel_sigkilled_while_mlflow_is_down_loses_nothing(tmp_path, energy_home, flat_trace, mlflow_server,
                                                            kernels):
    """The measurements exist only in the dead kernel's journal; the next kernel writes them once."""
    uri = mlflow_server.uri
    km, kc = start_kernel(tmp_path, energy_home, flat_trace, uri)
    kernels.append((km, kc))
    execute(kc, "%load_ext ipython_energy")
    execute(kc, "%energy sweep doomed")
    execute(kc, "%%energy --param i=0\nimport time\ntime.sleep(0.1)")
    assert "every measurement" in execute(kc, "%energy flush --timeout 60", timeout=90)
    mlflow_server.kill()
    for i in range(1, 6):
        execute(kc, f"%%energy --param i={i}\nimport time\ntime.sleep(0.1)")
    execute(kc, "%energy end")
    # The journal is written off the cell's path, within milliseconds (fsync included); only an
    # event submitted in the last few milliseconds before a SIGKILL can miss it.
    time.sleep(0.5)
    os.kill(kernel_pid(km), signal.SIGKILL)
    time.sleep(0.5)
    kc.stop_channels()
    km.cleanup_resources()
    kernels.clear()

    mlflow_server.start()
    km2, kc2 = start_kernel(tmp_path, energy_home, flat_trace, uri)
    kernels.append((km2, kc2))
    execute(kc2, "%load_ext ipython_energy")
    assert "every measurement" in execute(kc2, "%energy flush --timeout 240", timeout=300)
    client, runs = mlflow_runs(uri)
    sweeps, children = split_sweep(runs)
    assert [s.info.run_name for s in sweeps] == ["doomed"]
    assert sorted(c.info.run_name for c in children) == [f"i={i}" for i in range(6)]
    for child in children:
        assert child.info.status == "FINISHED"
        assert len(client.get_metric_history(child.info.run_id, "cell_energy_j")) == 1
    assert_sweep_total_exact(client, sweeps[0], children)
    assert sweeps[0].info.status == "FINISHED"  # the sweep_end was in the journal too
    assert not list((energy_home / "spool").glob("*.jsonl")) or all(
        '"i":"5"' not in j.read_text() for j in (energy_home / "spool").glob("*.jsonl")), "journal retired"
