"""The real NVML backend driven by a fake ``pynvml`` module injected at the import seam
(``sys.modules["pynvml"]``); no GPU is needed or touched."""

from __future__ import annotations

import sys
import time

import pytest

from ipython_energy.sensors import SensorError, discover
from ipython_energy.sensors.nvml import discover_nvml, open_nvml
from tests.sensors.fake_pynvml import NVML_ERROR_DRIVER_NOT_LOADED, FakeGpu, make_fake_pynvml
from tests.sensors.injected_clock import Clock


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def two_gpus(monkeypatch, clock):
    gpus = [FakeGpu(uuid="GPU-aaaa1111-0000", power_w=100.0, clock=clock, t0=clock()),
            FakeGpu(uuid="GPU-bbbb2222-0000", power_w=250.0, clock=clock, t0=clock())]
    nv = make_fake_pynvml(gpus)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return nv


def test_counter_gpus_one_domain_each(two_gpus, clock):
    sensors, notes = discover_nvml()
    assert notes == []
    assert [s.domains()[0].name for s in sensors] == ["gpu0", "gpu1"]
    d = sensors[1].domains()[0]
    assert (d.kind, d.method, d.sensor, d.update_period_s, d.averaging_s) == ("gpu", "counter", "nvml", 0.1, 0.0)
    assert d.details["model"] == "NVIDIA H100 80GB HBM3"
    assert d.details["driver"] == "550.54.15"
    assert d.details["power_limit_w"] == "700"
    assert d.details["uuid"] == "GPU-bbbb2222-0000"
    r1 = sensors[1].read()["gpu1"]
    clock.advance(0.05)
    r2 = sensors[1].read()["gpu1"]
    assert r1.power_w == pytest.approx(250.0)
    assert r2.energy_j - r1.energy_j == pytest.approx(250.0 * 0.05, abs=0.001)  # mJ converted to J, cumulative
    assert sensors[0].state() == {"temperature_c": "41"}
    assert two_gpus.init_count == 2  # one nvmlInit reference per sensor, enumeration released its own
    for s in sensors:
        s.close()
        s.close()  # idempotent
    assert two_gpus.init_count == 0


def test_fake_counter_steps_and_costs_cpu(monkeypatch):
    """The fake itself (used by the meter tests): a counter that changes every 100 ms at its phase
    and burns CPU on every read, as an H100's does (~3 ms)."""
    gpu = FakeGpu(uuid="GPU-x", power_w=100.0, counter_period_s=0.1, counter_phase_s=0.03, counter_cost_s=0.002)
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml([gpu]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (sensor,), _ = discover_nvml()
    counter0, power0 = gpu.counter_reads, gpu.power_reads  # discovery probes the counter once
    c0 = time.thread_time()
    values = set()
    reads = 0
    end = time.monotonic() + 0.35
    while time.monotonic() < end:
        values.add(sensor.read_values()[0][0])
        reads += 1
    assert time.thread_time() - c0 >= 0.002 * reads
    assert gpu.counter_reads - counter0 == reads and gpu.power_reads - power0 == reads
    steps = sorted(values)
    assert 3 <= len(steps) <= 5
    # one update every 100 ms at 100 W: 10 J apart (the first value may be the one before t0 + phase)
    assert all(b - a == pytest.approx(10.0) for a, b in zip(steps[1:], steps[2:]))
    sensor.close()


def test_cuda_visible_devices_by_index_and_uuid(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    sensors, _ = discover_nvml()
    assert len(sensors) == 1
    d = sensors[0].domains()[0]
    assert d.name == "gpu0" and d.details["nvml_index"] == "1"  # cuda:0 is NVML GPU 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb,GPU-aaaa1111")
    sensors, _ = discover_nvml()
    assert [(s.domains()[0].name, s.domains()[0].details["uuid"]) for s in sensors] == [
        ("gpu0", "GPU-bbbb2222-0000"), ("gpu1", "GPU-aaaa1111-0000")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,7,1")
    sensors, notes = discover_nvml()
    assert len(sensors) == 1 and "'7'" in notes[0]  # CUDA stops at the first invalid entry
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    sensors, notes = discover_nvml()
    assert sensors == [] and "empty" in notes[0]


def test_gpu_without_counter_is_polled(monkeypatch):
    gpus = [FakeGpu(uuid="GPU-a", name="Tesla P100", has_counter=False, arch=4),
            FakeGpu(uuid="GPU-b", name="NVIDIA A10", has_counter=False, arch=7)]
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(gpus))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sensors, notes = discover_nvml()
    d0, d1 = (s.domains()[0] for s in sensors)
    assert d0.method == d1.method == "polled"
    assert d0.averaging_s == 0.0  # Pascal: instantaneous power
    assert d1.averaging_s == 1.0  # Ampere and newer: ~1 s average
    assert len(notes) == 2 and "no energy counter" in notes[0]
    r = sensors[0].read()["gpu0"]
    assert r.energy_j is None and r.power_w == pytest.approx(100.0)


def test_vanished_gpu_raises_on_read(two_gpus):
    sensors, _ = discover_nvml()
    two_gpus.gpus[0].lost = True
    with pytest.raises(two_gpus.NVMLError, match="GPU is lost"):
        sensors[0].read()
    assert sensors[1].read()["gpu1"].power_w == pytest.approx(250.0)


def test_no_driver_is_a_note_or_an_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml([], init_error=NVML_ERROR_DRIVER_NOT_LOADED))
    sensors, notes = discover_nvml()
    assert sensors == [] and "Driver Not Loaded" in notes[0]
    with pytest.raises(SensorError, match="NVML"):
        open_nvml()
    with pytest.raises(SensorError, match="NVML"):
        discover("nvml")
    # auto never raises: the GPU problem is a note, the CPU estimate steps in
    found = discover("auto", rapl_root=str(tmp_path / "absent"))
    assert [s.name for s in found.sensors] == ["cpu-model"]
    assert any("NVML" in n for n in found.notes)


def test_pynvml_missing_is_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    sensors, notes = discover_nvml()
    assert sensors == [] and "nvidia-ml-py" in notes[0]
    with pytest.raises(SensorError, match="nvidia-ml-py"):
        open_nvml()
