"""Energy at low utilisation (issue 11, item 3), through the real sensors at their seams: the replay
sensor with a ``<domain>_util`` column, the real NVML backend on a fake ``pynvml`` that reports
utilisation, the real RAPL backend on a fake powercap tree with a fake ``/proc/stat``, and the
cpu-model estimate on an injected CPU-time function.  The meter runs on an injected clock and the
test takes the sampler's ticks (``Meter(background=False)``), so the figures are exact."""

from __future__ import annotations

import sys

import pytest

from ipython_energy.measurement import Measurement
from ipython_energy.meter import Meter
from ipython_energy.sensors.cpu_model import CpuModelSensor
from ipython_energy.sensors.rapl import open_rapl
from ipython_energy.sensors.replay import ReplaySensor, ReplayTrace
from tests.sensors.fake_pynvml import FakeGpu, make_fake_pynvml
from tests.sensors.injected_clock import Clock, Ticks
from tests.sensors.test_rapl_sensor import set_energy, zone


class Driven(Ticks):
    def __init__(self, sensors, clock, *, interval_s=0.1, dither=False, probe_s=None, **kw):
        self.meter = Meter(sensors, interval_s=interval_s, clock=clock, background=False, **kw)
        self.meter.start()
        super().__init__(self.meter.sampler, clock, dither=dither, probe_s=probe_s)


def busy_then_idle_trace() -> ReplayTrace:
    """gpu0: 300 W at 100 % utilisation for 10 s, then 80 W at 5 % for 10 s (then held); cpu: a flat
    20 W and no utilisation column."""
    return ReplayTrace([0.0, 10.0, 10.0, 20.0, 3600.0], {
        "gpu0_w": [300.0, 300.0, 80.0, 80.0, 80.0],
        "gpu0_util": [100.0, 100.0, 5.0, 5.0, 5.0],
        "cpu_w": [20.0] * 5,
    })


def test_replay_util_column_half_busy_half_idle_gives_the_idle_halfs_energy():
    """The done-when case: utilisation 100 for half of a window and 5 for the other half gives
    energy_low_util_j equal to the second half's energy within 2 %."""
    clock = Clock()
    sensor = ReplaySensor(busy_then_idle_trace(), clock=clock)
    d = Driven([sensor], clock)
    w = d.meter.begin("run")
    d.run(20.0)
    m = w.end()
    t_half = sensor.t0 + 10.0
    second_half_j = sensor.true_energy_j("gpu0", t_half, w.end_s)
    assert m.domains_low_util_j["gpu0"] == pytest.approx(second_half_j, rel=0.02)
    assert m.energy_low_util_j == pytest.approx(second_half_j, rel=0.02)
    assert m.domains_low_util_s["gpu0"] == pytest.approx(w.end_s - t_half, rel=0.02)
    assert m.low_util_s == m.domains_low_util_s["gpu0"]
    assert m.low_util_threshold == 0.3
    # cpu has no utilisation column: no figure at all, not 0 J
    assert "cpu" not in m.domains_low_util_j and "cpu" not in m.domains_low_util_s
    share = round(100 * m.domains_low_util_j["gpu0"] / m.domains["gpu0"])
    assert f"· {share} % of gpu0 energy at < 30 % utilisation" in m.summary()
    assert "at &lt; 30 % utilisation" in m._repr_html_()


def test_windows_inside_each_half_are_all_or_nothing():
    clock = Clock()
    sensor = ReplaySensor(busy_then_idle_trace(), clock=clock)
    d = Driven([sensor], clock)
    d.run(2.0)
    busy = d.meter.begin("busy")
    d.run(5.0)
    b = busy.end()
    d.run(5.0)
    idle = d.meter.begin("idle")
    d.run(5.0)
    i = idle.end()
    assert b.domains_low_util_j["gpu0"] == 0.0 and b.domains_low_util_s["gpu0"] == 0.0
    assert "utilisation" not in b.summary()  # 0 % of the energy: it does not matter
    assert i.domains_low_util_j["gpu0"] == pytest.approx(i.domains["gpu0"], rel=1e-9)
    assert i.domains_low_util_s["gpu0"] == pytest.approx(i.duration_s, rel=1e-6)


def test_the_threshold_is_the_meters():
    clock = Clock()
    trace = ReplayTrace([0.0, 3600.0], {"gpu0_w": [100.0, 100.0], "gpu0_util": [40.0, 40.0]})
    d = Driven([ReplaySensor(trace, clock=clock)], clock, low_util=0.5)
    w = d.meter.begin("w")
    d.run(3.0)
    m = w.end()
    assert m.low_util_threshold == 0.5
    assert m.domains_low_util_j["gpu0"] == pytest.approx(m.domains["gpu0"], rel=1e-9)
    clock2 = Clock()
    d2 = Driven([ReplaySensor(trace, clock=clock2)], clock2)  # default 30 %: 40 % is not low
    w2 = d2.meter.begin("w")
    d2.run(3.0)
    assert w2.end().domains_low_util_j == {"gpu0": 0.0}


def test_replay_rejects_a_util_column_out_of_range_or_without_its_domain():
    with pytest.raises(ValueError, match="per cent"):
        ReplayTrace([0, 1], {"gpu0_w": [1, 1], "gpu0_util": [0, 120]})
    with pytest.raises(ValueError, match="has no gpu1_w"):
        ReplayTrace([0, 1], {"gpu0_w": [1, 1], "gpu1_util": [0, 10]})


def test_a_trace_without_util_columns_reports_none():
    clock = Clock()
    d = Driven([ReplaySensor(ReplayTrace([0, 3600], {"gpu0_w": [100, 100]}), clock=clock)], clock)
    w = d.meter.begin("w")
    d.run(2.0)
    m = w.end()
    assert m.domains_low_util_j == {} and m.energy_low_util_j is None and m.low_util_s is None
    assert m.low_util_threshold is None
    assert "utilisation" not in m.summary() and "utilisation" not in m._repr_html_()


def test_fake_pynvml_drives_the_same_through_the_real_nvml_sensor(monkeypatch):
    """A 100 ms H100-like counter (3 ms per read on the injected clock), 300 W at 100 % utilisation
    for 30 s then 80 W at 5 %: the real NVML backend reads nvmlDeviceGetUtilizationRates beside the
    counter, and the window's energy at low utilisation is the second half's within 2 %.  The error
    is one change of load's worth, not a share of the window: at most a quarter second of the
    power difference (a utilisation period of 0.2 s, NVML's own 1/6 s look-back, and the counter's
    100 ms staleness at the reading right after the change).  Utilisation is read at most every
    other sample, not with every counter read."""
    clock = Clock()
    clock0 = clock()
    edge = 1.0 + 30.0  # seconds after clock0

    def energy(x):
        return 300.0 * min(x, edge) + 80.0 * max(0.0, x - edge)

    gpu = FakeGpu(uuid="GPU-0", counter_period_s=0.1, counter_phase_s=0.037, counter_cost_s=0.003,
                  clock=clock, spend=clock.advance, t0=clock0, energy_j_at=energy,
                  power_w_at=lambda x: 300.0 if x < edge else 80.0,
                  util_at=lambda x: 100.0 if x < edge else 5.0)
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml([gpu]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    from ipython_energy.sensors import discover

    found = discover("nvml")
    assert found.sensors[0].domains()[0].details["util_api"] == "nvmlDeviceGetUtilizationRates"
    d = Driven(found.sensors, clock, interval_s=0.1, dither=True, probe_s=0.025)
    d.run(1.0)
    reads0, utils0 = gpu.counter_reads, gpu.util_reads
    w = d.meter.begin("run")
    d.run(60.0)
    m = w.end()
    truth = gpu.true_energy_j(w.end_s - clock0) - gpu.true_energy_j(edge)
    assert m.domains["gpu0"] == pytest.approx(gpu.true_energy_j(w.end_s - clock0)
                                              - gpu.true_energy_j(w.begin_s - clock0), rel=0.005)
    assert m.domains_low_util_j["gpu0"] == pytest.approx(truth, rel=0.02)
    assert abs(m.domains_low_util_j["gpu0"] - truth) <= 0.25 * (300.0 - 80.0)
    assert m.domains_low_util_s["gpu0"] == pytest.approx(w.end_s - (clock0 + edge), abs=0.25)
    counter_reads, util_reads = gpu.counter_reads - reads0, gpu.util_reads - utils0
    assert 0.3 * counter_reads <= util_reads <= 0.6 * counter_reads, (util_reads, counter_reads)
    found.close()


def test_a_gpu_without_utilisation_reports_none(monkeypatch):
    clock = Clock()
    gpu = FakeGpu(uuid="GPU-0", power_w=100.0, clock=clock, t0=clock())  # util: Not Supported
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml([gpu]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    from ipython_energy.sensors import discover

    found = discover("nvml")
    assert found.sensors[0].utilisation is None
    d = Driven(found.sensors, clock)
    w = d.meter.begin("w")
    d.run(2.0)
    assert w.end().domains_low_util_j == {}
    assert gpu.util_reads == 0
    found.close()


def test_cpu_model_utilisation_is_the_process_share_of_the_cpus():
    """The estimate's utilisation: this process's CPU time over the interval, as a share of the CPUs
    it may use (4 here); 0.2 busy CPUs (5 %) is low, 3.6 (90 %) is not."""
    clock = Clock()
    cpu = {"s": 0.0}
    rate = {"busy": 0.2}

    def cpu_time():
        return cpu["s"]

    sensor = CpuModelSensor({"n_cpus": 4}, clock=clock, cpu_time=cpu_time)

    class CpuTicks(Driven):
        def run(self, seconds):  # the process's CPU time moves with the clock
            end = self.clock() + seconds
            while self.next_t <= end:
                cpu["s"] += rate["busy"] * (self.next_t - self.clock.t)
                self.clock.t = self.next_t
                self.sampler.tick()
                self.next_t += self._step()
            cpu["s"] += rate["busy"] * (end - self.clock.t)
            self.clock.t = end

    d = CpuTicks([sensor], clock)
    d.run(0.5)  # (the stretch before the first utilisation reading is not classified)
    w = d.meter.begin("quiet")
    d.run(3.0)
    quiet = w.end()
    assert quiet.domains_low_util_j["cpu"] == pytest.approx(quiet.domains["cpu"], rel=1e-6)
    rate["busy"] = 3.6
    d.run(0.5)
    w = d.meter.begin("busy")
    d.run(3.0)
    busy = w.end()
    assert busy.domains_low_util_j["cpu"] == 0.0


def test_rapl_packages_get_the_machines_cpu_utilisation_from_proc_stat(tmp_path):
    """The real RAPL backend on a fake powercap tree, with a fake /proc/stat: the packages get the
    machine's busy share of CPU time; DRAM has no utilisation (absent, not 0 J)."""
    root = tmp_path / "powercap"
    pkg = zone(root, "intel-rapl:0", "package-0", 1_000_000)
    dram = zone(root, "intel-rapl:0:0", "dram", 500_000)
    stat = tmp_path / "stat"
    ticks = {"busy": 0, "idle": 0}

    def write_stat():
        stat.write_text(f"cpu  {ticks['busy']} 0 0 {ticks['idle']} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")

    write_stat()
    clock = Clock()
    sensor = open_rapl(root, clock=clock, stat_path=str(stat))
    energy = {"pkg": 1_000_000, "dram": 500_000}

    class RaplTicks(Driven):
        def run(self, seconds, busy_share):
            end = self.clock() + seconds
            while self.next_t <= end:
                dt = self.next_t - self.clock.t
                energy["pkg"] += int(50e6 * dt)  # 50 W
                energy["dram"] += int(5e6 * dt)  # 5 W
                set_energy(pkg, energy["pkg"])
                set_energy(dram, energy["dram"])
                ticks["busy"] += int(round(800 * dt * busy_share))  # 8 CPUs at 100 ticks/s
                ticks["idle"] += int(round(800 * dt * (1 - busy_share)))
                write_stat()
                self.clock.t = self.next_t
                self.sampler.tick()
                self.next_t += self._step()
            self.clock.t = end

    d = RaplTicks([sensor], clock)
    d.run(1.0, 0.1)
    w = d.meter.begin("w")
    d.run(5.0, 0.1)   # 10 % busy: low
    d.run(5.0, 0.9)   # 90 % busy
    m = w.end()
    pkg_j = m.domains["package0"]
    assert m.domains_low_util_j["package0"] == pytest.approx(pkg_j / 2, rel=0.1)
    assert m.domains_low_util_s["package0"] == pytest.approx(5.0, rel=0.1)
    assert "dram0" not in m.domains_low_util_j
    sensor.close()


def test_stages_in_the_summary_line_and_html():
    """Issue 11, item 4: a run's measurement with stages prints them, with their share."""
    m = Measurement(label="run", energy_j=3900.0, duration_s=60.0, power_mean_w=65.0, power_peak_w=90.0,
                    domains={"gpu0": 3900.0}, idle_j=0.0, net_j=3900.0, provenance={},
                    stages={"data": (1200.0, 20.0), "train": (2600.0, 39.0)})
    line = m.summary()
    assert "data 1.2 kJ (31 %) · train 2.6 kJ (67 %)" in line
    page = m._repr_html_()
    assert "ipython-energy-stages" in page and "<td>data</td>" in page and "31 %" in page
    plain = Measurement(label="run", energy_j=1.0, duration_s=1.0, power_mean_w=1.0, power_peak_w=1.0,
                        domains={}, idle_j=0.0, net_j=1.0, provenance={})
    assert "stage" not in plain._repr_html_()
