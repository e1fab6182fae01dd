"""The replay sensor against an injected clock: exact energies of known traces."""

from __future__ import annotations

import pytest

from ipython_energy.sensors import SensorError, discover
from ipython_energy.sensors.replay import ReplaySensor, ReplayTrace, write_trace_csv


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_watts_piecewise_linear_exact_energy():
    # ramp 0 -> 100 W over 10 s, then a step to 300 W held for 5 s
    tr = ReplayTrace([0, 10, 10, 15], {"gpu0_w": [0, 100, 300, 300]})
    assert tr.energy_between_j("gpu0", 0, 10) == pytest.approx(500.0)
    assert tr.energy_between_j("gpu0", 0, 5) == pytest.approx(125.0)  # quadratic within the segment
    assert tr.energy_between_j("gpu0", 10, 15) == pytest.approx(1500.0)
    assert tr.power_at_w("gpu0", 2.5) == pytest.approx(25.0)
    assert tr.energy_between_j("gpu0", 15, 20) == pytest.approx(1500.0)  # past the end: last power held
    assert tr.energy_between_j("gpu0", 15, 20, loop=True) == pytest.approx(
        tr.energy_between_j("gpu0", 0, 5))


def test_joule_columns_interpolate_and_give_slope_power():
    tr = ReplayTrace([0, 2, 4], {"cpu_j": [10, 30, 30]})
    assert tr.energy_between_j("cpu", 0, 1) == pytest.approx(10.0)
    assert tr.power_at_w("cpu", 1) == pytest.approx(10.0)
    assert tr.power_at_w("cpu", 3) == pytest.approx(0.0)


def test_plays_against_the_clock_from_start():
    clk = Clock()
    s = ReplaySensor(ReplayTrace([0, 100], {"gpu0_w": [50, 50], "cpu_j": [0, 1000]}), clock=clk)
    s.start()
    clk.t += 4.0
    r = s.read()
    assert r["gpu0"].energy_j == pytest.approx(200.0) and r["gpu0"].power_w == pytest.approx(50.0)
    assert r["cpu"].energy_j == pytest.approx(40.0) and r["cpu"].power_w == pytest.approx(10.0)
    assert s.true_energy_j("gpu0", 1001.0, 1003.0) == pytest.approx(100.0)
    assert {d.name: (d.kind, d.method) for d in s.domains()} == {
        "gpu0": ("gpu", "replay"), "cpu": ("cpu", "replay")}


def test_counter_emulation_updates_only_every_period():
    clk = Clock(0.0)
    s = ReplaySensor(ReplayTrace([0, 100], {"gpu0_w": [100, 100]}), clock=clk,
                     update_period_s=0.1, phase_s=0.03, report_power=False)
    s.start(0.0)
    seen = []
    for k in range(40):
        clk.t = 0.5 + k * 0.01
        seen.append(s.read()["gpu0"].energy_j)
    assert seen[0] == pytest.approx(100 * 0.43)  # last update at 0.43 s
    assert sorted(set(round(v, 6) for v in seen)) == [43.0, 53.0, 63.0, 73.0, 83.0]  # updates at .53 .63 .73 .83
    assert s.read()["gpu0"].power_w is None


def test_power_averaging_emulation():
    clk = Clock(0.0)
    s = ReplaySensor(ReplayTrace([0, 5, 5, 10], {"gpu0_w": [100, 100, 300, 300]}), clock=clk,
                     averaging_s=1.0, report_energy=False)
    s.start(0.0)
    clk.t = 5.25
    r = s.read()["gpu0"]
    assert r.energy_j is None
    assert r.power_w == pytest.approx(0.75 * 100 + 0.25 * 300)  # trailing 1 s mean


def test_csv_round_trip_and_discovery(tmp_path, monkeypatch):
    p = tmp_path / "t.csv"
    write_trace_csv(p, [0, 1, 2], {"gpu0_w": [10, 20, 30], "cpu_j": [0, 5, 10]})
    tr = ReplayTrace.from_csv(p)
    assert tr.energy_between_j("gpu0", 0, 2) == pytest.approx(40.0)
    found = discover(f"replay:{p}")
    assert [s.name for s in found.sensors] == ["replay"] and found.notes == []
    monkeypatch.setenv("IPYTHON_ENERGY_SENSORS", f"replay:{p}")
    assert [d.name for d in discover().domains] == ["gpu0", "cpu"]
    with pytest.raises(SensorError, match="not found"):
        discover(f"replay:{tmp_path / 'missing.csv'}")
    bad = tmp_path / "bad.csv"
    bad.write_text("t_s,gpu0\n0,1\n")
    with pytest.raises(SensorError, match="_w"):
        ReplaySensor(bad)
    with pytest.raises(SensorError, match="unknown sensor"):
        discover("nvml-ish")
    with pytest.raises(SensorError, match="same domain twice"):
        discover(f"replay:{p},replay:{p}")


@pytest.mark.parametrize("kw", [
    {}, {"update_period_s": 0.1, "phase_s": 0.03}, {"averaging_s": 1.0, "report_energy": False},
    {"report_power": False}, {"loop": True}])
def test_read_values_is_read_without_the_objects(kw):
    # read_values() (what the sampler calls on every tick) and read() agree, pair by pair, in the
    # order of domains(), at segment boundaries, inside segments, past the end and looping.
    clk = Clock(0.0)
    tr = ReplayTrace([0, 1, 1, 3, 4], {"gpu0_w": [100, 200, 50, 50, 400], "cpu_j": [0, 10, 10, 40, 41]})
    s = ReplaySensor(tr, clock=clk, names={"cpu": "package0"}, **kw)
    s.start(0.0)
    for t in (0.0, 0.5, 1.0, 1.0, 2.7, 3.99, 4.0, 4.5, 9.3, 2.0):  # ends by going back: the segment cache
        clk.t = t
        values = s.read_values()
        assert [d.name for d in s.domains()] == ["gpu0", "package0"]
        assert values == tuple(tuple(r) for r in s.read().values())
        assert all(type(v) is tuple and len(v) == 2 for v in values)
