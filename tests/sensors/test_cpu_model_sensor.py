"""The CPU estimate, with an injected clock and CPU-time source, and once against the real process clock."""

from __future__ import annotations

import time

import pytest

from ipython_energy.sensors.cpu_model import CpuModelOptions, CpuModelSensor


class Ticker:
    def __init__(self):
        self.t = 100.0
        self.cpu = 5.0

    def clock(self):
        return self.t

    def cpu_time(self):
        return self.cpu


def test_model_equations_and_integration():
    tk = Ticker()
    s = CpuModelSensor({"n_cpus": 4}, clock=tk.clock, cpu_time=tk.cpu_time)
    d = s.domains()[0]
    assert (d.name, d.kind, d.method, d.sensor) == ("cpu", "cpu", "estimated", "cpu-model")
    assert d.estimated and d.details["idle_w_per_cpu"] == "1.5" and d.details["active_w_per_cpu"] == "8"
    tk.t += 2.0
    tk.cpu += 3.0  # 1.5 busy CPUs on average
    r = s.read()["cpu"]
    expected_w = 4 * 1.5 + 1.5 * (8.0 - 1.5)
    assert r.power_w == pytest.approx(expected_w)
    assert r.energy_j == pytest.approx(expected_w * 2.0)
    tk.t += 1.0  # idle second
    r2 = s.read()["cpu"]
    assert r2.power_w == pytest.approx(6.0)
    assert r2.energy_j == pytest.approx(expected_w * 2.0 + 6.0)
    tk.t += 1.0
    tk.cpu += 10.0  # more than n_cpus busy: clamped
    assert s.read()["cpu"].power_w == pytest.approx(4 * 8.0)


def test_tdp_mode_and_lead_option_names():
    tk = Ticker()
    s = CpuModelSensor({"tdp_w": 100.0, "n_cpus": 10, "idle_w_per_core": None}, clock=tk.clock, cpu_time=tk.cpu_time)
    assert (s.idle_w_per_cpu, s.active_w_per_cpu) == (pytest.approx(2.0), pytest.approx(10.0))
    s2 = CpuModelSensor({"idle_w_per_core": 1.0, "active_w_per_core": 5.0, "tdp_w": None})
    assert (s2.idle_w_per_cpu, s2.active_w_per_cpu) == (1.0, 5.0)
    with pytest.raises(ValueError, match="unknown cpu-model option"):
        CpuModelOptions.from_mapping({"watts": 3})
    with pytest.raises(ValueError):
        CpuModelSensor({"idle_w_per_cpu": 9.0, "active_w_per_cpu": 2.0})


def test_real_process_time_raises_power_when_busy():
    s = CpuModelSensor({"n_cpus": 2})
    s.read()
    time.sleep(0.2)
    idle = s.read()["cpu"].power_w
    c0, t0 = time.process_time(), time.monotonic()
    x = 0
    while time.monotonic() < t0 + 0.3:
        x += 1
    busy = s.read()["cpu"].power_w
    share = (time.process_time() - c0) / (time.monotonic() - t0)  # the CPU this process really got
    assert idle < 2 * 1.5 + 0.3 * 6.5
    assert busy > idle
    assert busy == pytest.approx(2 * 1.5 + share * 6.5, abs=0.15 * 6.5)


def test_read_values_matches_read():
    tk = Ticker()
    a = CpuModelSensor({"n_cpus": 2}, clock=tk.clock, cpu_time=tk.cpu_time)
    b = CpuModelSensor({"n_cpus": 2}, clock=tk.clock, cpu_time=tk.cpu_time)
    for dt, dcpu in [(0.1, 0.05), (0.1, 0.3), (0.5, 0.0), (0.0, 0.0), (1.0, 5.0)]:  # 5 CPU s in 1 s: clamped
        tk.t += dt
        tk.cpu += dcpu
        (pair,) = a.read_values()
        r = b.read()["cpu"]
        assert pair == (r.energy_j, r.power_w)
    assert pair[1] == pytest.approx(2 * 8.0)  # two CPUs fully busy at most
