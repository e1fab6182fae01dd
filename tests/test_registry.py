"""The kernel registry under IPYTHON_ENERGY_HOME: ``kernels/`` (where each kernel logs) and ``live/``
(its power and session energy now), as the kernels write them and the sidebar's server reads them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from ipython_energy import registry


def test_a_registered_kernel_is_read_back_alive_and_gone_after_unregister(energy_home):
    record = registry.KernelRecord("k1", os.getpid(), "sqlite:////data/mlflow.db", "exp", "/nb", 123.5)
    registry.register_kernel(record)
    assert registry.kernels() == [record]
    assert record.alive
    path = energy_home / "kernels" / "k1.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    registry.unregister("k1")
    assert registry.kernels() == []
    registry.unregister("k1")  # twice is fine


def test_records_of_dead_or_unknown_processes_are_not_alive(energy_home):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    registry.register_kernel(registry.KernelRecord("gone", dead.pid, "sqlite:///a.db", "exp"))
    (energy_home / "kernels" / "nopid.json").write_text(json.dumps({"tracking_uri": "sqlite:///b.db"}))
    (energy_home / "kernels" / "nouri.json").write_text(json.dumps({"session": "x", "pid": os.getpid()}))
    found = {k.session: k for k in registry.kernels()}
    assert set(found) == {"gone", "nopid"}  # a record that says nothing of where it logs is no record
    assert not found["gone"].alive and not found["nopid"].alive
    assert found["nopid"].experiment_name == ""


def test_live_state_round_trip_keeps_only_what_the_sidebar_shows(energy_home):
    registry.write_live("k2", {"session": "k2", "pid": os.getpid(), "updated_at": 1000.0, "power_w": "12.5",
                               "total_j": 50.0, "methods": {"cpu": "estimated"}, "estimated": True,
                               "active_run": {"name": "r", "uid": "k2-1", "energy_j": 3.0},
                               "active_sweep": "not a dict"})
    (session,) = registry.live_sessions(now=1004.0)
    assert session["power_w"] == 12.5 and session["total_j"] == 50.0 and session["age_s"] == 4.0
    assert session["active_run"] == {"name": "r", "energy_j": 3.0} and session["active_sweep"] is None
    assert session["stale"] is False
    assert registry.live_sessions(now=1011.0)[0]["stale"] is True
