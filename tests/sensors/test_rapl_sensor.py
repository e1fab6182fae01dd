"""The real RAPL backend reading a fake powercap sysfs tree built in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ipython_energy.sensors import SensorError, discover
from ipython_energy.sensors import rapl as rapl_mod
from ipython_energy.sensors.rapl import discover_rapl, open_rapl
from tests.sensors.injected_clock import Clock


def zone(root: Path, dirname: str, name: str, energy_uj: int, max_uj: int = 262143328850) -> Path:
    d = root / dirname
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


def set_energy(d: Path, uj: int) -> None:
    (d / "energy_uj").write_text(f"{uj}\n")


@pytest.fixture
def two_sockets(tmp_path) -> Path:
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 1_000_000)
    zone(root, "intel-rapl:0:0", "core", 500_000)
    zone(root, "intel-rapl:0:1", "uncore", 100_000)
    zone(root, "intel-rapl:0:2", "dram", 300_000)
    zone(root, "intel-rapl:1", "package-1", 2_000_000)
    zone(root, "intel-rapl:1:0", "core", 700_000)
    zone(root, "intel-rapl:1:1", "dram", 400_000)
    zone(root, "intel-rapl:2", "psys", 9_000_000)
    zone(root, "intel-rapl-mmio:0", "package-0", 1_000_000)  # same counter again, via MMIO
    return root


def test_package_and_dram_per_socket_without_double_counting(two_sockets):
    s = open_rapl(two_sockets)
    assert [(d.name, d.kind, d.method, d.sensor) for d in s.domains()] == [
        ("package0", "cpu", "counter", "rapl"), ("dram0", "dram", "counter", "rapl"),
        ("package1", "cpu", "counter", "rapl"), ("dram1", "dram", "counter", "rapl")]
    r = s.read()
    assert set(r) == {"package0", "dram0", "package1", "dram1"}  # no core, uncore, psys or mmio
    assert r["package0"].energy_j == pytest.approx(1.0)
    assert r["dram1"].energy_j == pytest.approx(0.4)
    set_energy(two_sockets / "intel-rapl:0", 3_500_000)
    assert s.read()["package0"].energy_j == pytest.approx(3.5)


def test_psys_only_without_packages(tmp_path):
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "psys", 5_000_000)
    s = open_rapl(root)
    assert [d.name for d in s.domains()] == ["psys"]
    assert s.read()["psys"].energy_j == pytest.approx(5.0)


REAL_RANGE_UJ = 262_143_328_850  # a common max_energy_range_uj (~262 kJ)


def test_wraparound_is_unwrapped(tmp_path):
    root = tmp_path / "powercap"
    pkg = zone(root, "intel-rapl:0", "package-0", 990_000, max_uj=1_000_000)
    clock = Clock()
    s = open_rapl(root, clock=clock)
    assert s.read()["package0"].energy_j == pytest.approx(0.99)
    clock.advance(0.1)
    set_energy(pkg, 20_000)  # wrapped at max_energy_range_uj: 10 mJ to the top, 20 mJ after
    assert s.read()["package0"].energy_j == pytest.approx(1.02)
    clock.advance(0.1)
    set_energy(pkg, 500_000)
    assert s.read()["package0"].energy_j == pytest.approx(1.5)
    clock.advance(0.1)
    set_energy(pkg, 100)  # second wrap
    assert s.read()["package0"].energy_j == pytest.approx(2.0001)
    clock.advance(0.1)
    set_energy(pkg, 999_000)  # counted round to above the value before the wrap, in time: no glitch
    assert s.read()["package0"].energy_j == pytest.approx(2.999)


def test_counter_reset_is_passed_on_as_a_decrease_not_counted_as_a_wrap(tmp_path):
    root = tmp_path / "powercap"
    pkg = zone(root, "intel-rapl:0", "package-0", 100_000_000_000, max_uj=REAL_RANGE_UJ)  # at 100 kJ
    clock = Clock()
    s = open_rapl(root, clock=clock)
    assert s.read()["package0"].energy_j == pytest.approx(100_000.0)
    clock.advance(0.1)
    set_energy(pkg, 5_000_000)  # restarted from 0: 162 kJ to the top is not 0.1 s of any CPU
    assert s.read()["package0"].energy_j == pytest.approx(5.0)  # the sampler makes this a gap
    clock.advance(0.1)
    set_energy(pkg, 10_000_000)
    assert s.read()["package0"].energy_j == pytest.approx(10.0)


@pytest.mark.parametrize("to_top_j,elapsed_s,wrap", [
    (100.0, 0.1, True),  # 150 J in 0.1 s: within MAX_ZONE_POWER_W (2 kW x 0.101 s = 202 J)
    (1000.0, 0.1, False),  # 1050 J in 0.1 s: no CPU draws 10 kW, so a reset
    (1000.0, 1.0, True),  # the same distance after a 1 s pause: a wrap
])
def test_wrap_or_reset_by_the_energy_the_zone_could_draw_meanwhile(tmp_path, to_top_j, elapsed_s, wrap):
    root = tmp_path / "powercap"
    last_uj = REAL_RANGE_UJ - int(to_top_j * 1e6)
    pkg = zone(root, "intel-rapl:0", "package-0", last_uj, max_uj=REAL_RANGE_UJ)
    clock = Clock()
    s = open_rapl(root, clock=clock)
    clock.advance(elapsed_s)
    set_energy(pkg, 50_000_000)  # 50 J
    expected_uj = REAL_RANGE_UJ + 50_000_000 if wrap else 50_000_000
    assert s.read()["package0"].energy_j == pytest.approx(expected_uj * 1e-6)
    assert rapl_mod.MAX_ZONE_POWER_W == 2000.0


def test_a_glitch_taken_for_a_wrap_is_taken_back(tmp_path):
    root = tmp_path / "powercap"
    top_uj = REAL_RANGE_UJ
    pkg = zone(root, "intel-rapl:0", "package-0", top_uj - 100_000_000, max_uj=top_uj)  # 100 J below the top
    clock = Clock()
    s = open_rapl(root, clock=clock)
    clock.advance(0.1)
    set_energy(pkg, 0)  # a bad read of 0, near enough to the top to pass for a wrap
    assert s.read()["package0"].energy_j == pytest.approx(top_uj * 1e-6)
    clock.advance(0.1)
    set_energy(pkg, top_uj - 80_000_000)  # back where it was: it could not have gone round in 0.2 s
    assert s.read()["package0"].energy_j == pytest.approx((top_uj - 80_000_000) * 1e-6)
    clock.advance(0.1)
    set_energy(pkg, top_uj - 70_000_000)
    assert s.read()["package0"].energy_j == pytest.approx((top_uj - 70_000_000) * 1e-6)


def test_missing_tree_is_a_note(tmp_path):
    sensor, notes = discover_rapl(tmp_path / "nope")
    assert sensor is None and "does not exist" in notes[0]
    with pytest.raises(SensorError):
        open_rapl(tmp_path / "nope")


def test_permission_denied_note_and_explicit_error(two_sockets, monkeypatch):
    target = two_sockets / "intel-rapl:0" / "energy_uj"
    target.chmod(0)
    if os.geteuid() == 0:
        # root ignores file modes; make the seam answer as the kernel does for a non-root reader
        real = rapl_mod.read_sysfs

        def denied(path):
            if Path(path) == target:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(rapl_mod, "read_sysfs", denied)
    sensor, notes = discover_rapl(two_sockets)
    assert sensor is None
    assert "permission denied" in notes[0] and "chmod a+r" in notes[0] and "udev" in notes[0]
    with pytest.raises(SensorError, match="chmod a\\+r"):
        open_rapl(two_sockets)
    with pytest.raises(SensorError, match="permission denied"):
        discover("rapl", rapl_root=str(two_sockets))
    # auto: RAPL unreadable -> the labelled CPU estimate, and the note says why
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)
    found = discover(None, rapl_root=str(two_sockets))
    assert [s.name for s in found.sensors] == ["cpu-model"]
    assert any("permission denied" in n for n in found.notes)


def test_auto_uses_rapl_and_no_estimate_when_readable(two_sockets, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)
    monkeypatch.delenv("IPYTHON_ENERGY_SENSORS", raising=False)
    found = discover(rapl_root=str(two_sockets))
    assert [s.name for s in found.sensors] == ["rapl"]
    assert not any(d.estimated for d in found.domains)
