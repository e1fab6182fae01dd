"""The magic in a real Jupyter kernel (ipykernel via jupyter_client): SIGKILL and restart mid-run.

Hardware seam: the replay sensor (flat 120 W trace).  MLflow is a real sqlite store.
"""

from __future__ import annotations

import pytest

from tests.helpers.mlflow_readback import runs, runs_by_name
from tests.helpers.waiting import wait_until

LIVE_EVERY_HALF_S = {"IPYTHON_ENERGY_LIVE_INTERVAL_S": "0.5"}


def test_kernel_sigkilled_mid_run_is_closed_killed_on_next_load(start_kernel, energy_home, flat_trace, sqlite_uri):
    kernel = start_kernel(flat_trace, sqlite_uri, **LIVE_EVERY_HALF_S)
    out = kernel.execute("%load_ext ipython_energy")
    assert "sensors: gpu0 replay, cpu replay" in out
    kernel.execute("%energy run doomed --param lr=0.1")
    kernel.submit("import time\nwhile True: time.sleep(0.1)")  # a long cell, never finishing

    def live_points():
        client, found = runs(sqlite_uri)
        if not found:
            return None
        points = client.get_metric_history(found[0].info.run_id, "live_energy_j")
        return points if len(points) >= 3 else None

    wait_until(live_points, timeout_s=60, poll_s=0.5, what="three live_energy_j points")
    kernel.sigkill()
    client, (run,) = runs(sqlite_uri)
    assert run.info.status == "RUNNING"  # nobody closed it: the kernel died
    last_live = max(client.get_metric_history(run.info.run_id, "live_energy_j"), key=lambda m: m.step)

    start_kernel(flat_trace, sqlite_uri, **LIVE_EVERY_HALF_S).execute("%load_ext ipython_energy")

    def closed_as_killed():
        now = client.get_run(run.info.run_id)
        return now if now.info.status == "KILLED" else None

    closed = wait_until(closed_as_killed, timeout_s=60, poll_s=0.5, what="the dead kernel's run closed as KILLED")
    assert closed.data.metrics["energy_j"] >= last_live.value
    assert closed.data.metrics["energy_j"] > 0
    assert "recovery" in closed.data.tags["energy.closed_by"]
    # The dead kernel's journal is retired once replayed.
    assert not any(p.suffix == ".jsonl" and "doomed" in p.read_text()
                   for p in (energy_home / "spool").glob("*.jsonl"))


def test_kernel_restart_closes_open_run_and_keeps_measurements(start_kernel, flat_trace, sqlite_uri):
    kernel = start_kernel(flat_trace, sqlite_uri, **LIVE_EVERY_HALF_S)
    kernel.execute("%load_ext ipython_energy")
    kernel.execute("%energy sweep restartable")
    kernel.execute("%%energy --param i=1\nimport time; time.sleep(0.3)")
    kernel.execute("%energy run open-when-restarted")
    kernel.execute("%%energy\ntime.sleep(0.2)")
    kernel.restart()
    kernel.execute("%load_ext ipython_energy")
    kernel.execute("%energy flush")
    kernel.shutdown()
    client, by_name = runs_by_name(sqlite_uri)
    assert by_name["i=1"].info.status == "FINISHED"
    assert by_name["open-when-restarted"].info.status == "KILLED"
    assert by_name["open-when-restarted"].data.metrics["energy_j"] > 0
    steps = client.get_metric_history(by_name["open-when-restarted"].info.run_id, "cell_energy_j")
    assert len(steps) == 1
    sweep = by_name["restartable"]
    assert sweep.data.metrics["sweep_runs_energy_j"] == pytest.approx(
        by_name["i=1"].data.metrics["energy_j"] + by_name["open-when-restarted"].data.metrics["energy_j"])


def test_loaded_from_config_with_autolog_and_live_readout(start_kernel, flat_trace, sqlite_uri):
    """c.InteractiveShellApp.extensions loads it; IPYTHON_ENERGY_AUTOLOG=1 measures plain cells;
    --live shows an ipywidgets readout that updates while the cell runs and ends as the summary."""
    kernel = start_kernel(flat_trace, sqlite_uri, extra_arguments=["--InteractiveShellApp.extensions=ipython_energy"],
                          IPYTHON_ENERGY_AUTOLOG="1", **LIVE_EVERY_HALF_S)
    status = kernel.execute("%energy")
    assert "gpu0: replay" in status
    plain = kernel.execute("x = sum(range(1000))")
    assert "⚡" in plain  # autolog measured a plain cell
    messages: list = []
    kernel.execute("%%energy --live --quiet\nimport time\ntime.sleep(2.6)", messages=messages)
    kernel.execute("%energy autolog off")
    kernel.execute("%energy flush")
    kernel.shutdown()
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
    _, found = runs(sqlite_uri)
    names = {r.info.run_name for r in found}
    assert any(n.startswith("autolog") for n in names)
