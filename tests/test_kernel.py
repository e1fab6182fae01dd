"""The magic in a real Jupyter kernel (ipykernel via jupyter_client): SIGKILL and restart mid-run.

Hardware seam: the replay sensor (flat 120 W trace).  MLflow is a real sqlite store.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from jupyter_client.manager import KernelManager
from mlflow.tracking import MlflowClient


def create_store(uri: str) -> None:
    """Make the sqlite store before any kernel runs: this test process reads it while a kernel writes,
    and two processes creating one new sqlite store at once race in MLflow's schema migration."""
    MlflowClient(uri).search_experiments(max_results=1)


def start_kernel(tmp_path, energy_home, trace, uri, extra_arguments=(), **more_env) -> tuple[KernelManager, object]:
    create_store(uri)
    env = dict(os.environ, **more_env)
    env.update({"IPYTHON_ENERGY_HOME": str(energy_home), "IPYTHON_ENERGY_SENSORS": f"replay:{trace}",
                "MLFLOW_TRACKING_URI": uri, "IPYTHON_ENERGY_LIVE_INTERVAL_S": "0.5",
                "PYTHONPATH": os.pathsep.join(sys.path)})
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(tmp_path), extra_arguments=list(extra_arguments))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def execute(kc, code: str, timeout: float = 60, messages: list | None = None) -> str:
    """Run ``code``; return its stdout; raise on an error reply.  ``messages`` collects every iopub message."""
    msg_id = kc.execute(code)
    out = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if messages is not None:
            messages.append(msg)
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise AssertionError("\n".join(msg["content"]["traceback"]))
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out)


def runs(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ipython-energy")
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


def wait_for(predicate, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("condition not met in time")


def test_kernel_sigkilled_mid_run_is_closed_killed_on_next_load(tmp_path, energy_home, flat_trace, sqlite_uri):
    km, kc = start_kernel(tmp_path, energy_home, flat_trace, sqlite_uri)
    try:
        out = execute(kc, "%load_ext ipython_energy")
        assert "sensors: gpu0 replay, cpu replay" in out
        execute(kc, "%energy run doomed --param lr=0.1")
        kc.execute("import time\nwhile True: time.sleep(0.1)")  # a long cell, never finishing

        def live_points():
            client, found = runs(sqlite_uri)
            if not found:
                return None
            history = client.get_metric_history(found[0].info.run_id, "live_energy_j")
            return history if len(history) >= 3 else None

        wait_for(live_points)
        os.kill(km.provisioner.pid if hasattr(km.provisioner, "pid") else km.kernel.pid, signal.SIGKILL)
        time.sleep(1.0)
    finally:
        kc.stop_channels()
        km.cleanup_resources()
    client, (run,) = runs(sqlite_uri)
    assert run.info.status == "RUNNING"  # nobody closed it: the kernel died
    last_live = max(client.get_metric_history(run.info.run_id, "live_energy_j"), key=lambda m: m.step)

    km2, kc2 = start_kernel(tmp_path, energy_home, flat_trace, sqlite_uri)
    try:
        execute(kc2, "%load_ext ipython_energy")
        closed = wait_for(lambda: (lambda r: r if r.info.status == "KILLED" else None)(
            runs(sqlite_uri)[0].get_run(run.info.run_id)))
    finally:
        kc2.stop_channels()
        km2.shutdown_kernel(now=True)
    assert closed.data.metrics["energy_j"] >= last_live.value
    assert closed.data.metrics["energy_j"] > 0
    assert "recovery" in closed.data.tags["energy.closed_by"]
    # The dead kernel's journal is retired once replayed.
    assert not any(p.suffix == ".jsonl" and "doomed" in p.read_text()
                   for p in (energy_home / "spool").glob("*.jsonl"))


def test_kernel_restart_closes_open_run_and_keeps_measurements(tmp_path, energy_home, flat_trace, sqlite_uri):
    km, kc = start_kernel(tmp_path, energy_home, flat_trace, sqlite_uri)
    try:
        execute(kc, "%load_ext ipython_energy")
        execute(kc, "%energy sweep restartable")
        execute(kc, "%%energy --param i=1\nimport time; time.sleep(0.3)")
        execute(kc, "%energy run open-when-restarted")
        execute(kc, "%%energy\ntime.sleep(0.2)")
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        execute(kc, "%load_ext ipython_energy")
        execute(kc, "%energy flush")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    client, found = runs(sqlite_uri)
    by_name = {r.info.run_name: r for r in found}
    assert by_name["i=1"].info.status == "FINISHED"
    assert by_name["open-when-restarted"].info.status == "KILLED"
    assert by_name["open-when-restarted"].data.metrics["energy_j"] > 0
    steps = client.get_metric_history(by_name["open-when-restarted"].info.run_id, "cell_energy_j")
    assert len(steps) == 1
    sweep = by_name["restartable"]
    assert sweep.data.metrics["sweep_energy_j"] == pytest.approx(
        by_name["i=1"].data.metrics["energy_j"] + by_name["open-when-restarted"].data.metrics["energy_j"])


def test_loaded_from_config_with_autolog_and_live_readout(tmp_path, energy_home, flat_trace, sqlite_uri):
    """c.InteractiveShellApp.extensions loads it; IPYTHON_ENERGY_AUTOLOG=1 measures plain cells;
    --live shows an ipywidgets readout that updates while the cell runs and ends as the summary."""
    km, kc = start_kernel(tmp_path, energy_home, flat_trace, sqlite_uri,
                          extra_arguments=["--InteractiveShellApp.extensions=ipython_energy"],
                          IPYTHON_ENERGY_AUTOLOG="1")
    try:
        status = execute(kc, "%energy")
        assert "gpu0: replay" in status
        plain = execute(kc, "x = sum(range(1000))")
        assert "⚡" in plain  # autolog measured a plain cell
        messages: list = []
        execute(kc, "%%energy --live --quiet\nimport time\ntime.sleep(2.6)", messages=messages)
        execute(kc, "%energy autolog off")
        execute(kc, "%energy flush")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    opened = [m for m in messages if m["msg_type"] == "comm_open"
              and m["content"]["data"]["state"].get("_model_name") == "HTMLModel"]
    assert opened, "the readout widget was displayed"
    comm_id = opened[0]["content"]["comm_id"]
    values = [m["content"]["data"]["state"]["value"] for m in messages
              if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id
              and "value" in m["content"]["data"].get("state", {})]
    live = [v for v in values if "so far" in v]
    assert len(live) >= 2, values  # updated about every second while the cell slept
    assert values[-1] == ""  # --quiet: the readout is cleared, not left stale
    client, found = runs(sqlite_uri)
    names = {r.info.run_name for r in found}
    assert any(n.startswith("autolog") for n in names)
