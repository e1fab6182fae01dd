"""The sampler thread against replay sensors and small misbehaving sensors (fakes at the sensor seam)."""

from __future__ import annotations

import math
import threading
import time

import pytest

from ipython_energy.sampler import THREAD_NAME, DomainSeries, PhaseLock, Sampler
from ipython_energy.sensors.base import DomainInfo, DomainReading
from ipython_energy.sensors.replay import ReplaySensor, ReplayTrace


def steady(name="gpu0", watts=100.0, **kw) -> ReplaySensor:
    return ReplaySensor(ReplayTrace([0, 3600], {f"{name}_w": [watts, watts]}), **kw)


class ScriptedSensor:
    """A sensor at the seam whose readings follow a script: values, exceptions or hangs."""

    name = "scripted"

    def __init__(self, domain="x", period_s=0.0, counter=True):
        self.domain = domain
        self.counter = counter
        self.info = DomainInfo(domain, "cpu", "counter" if counter else "polled", "scripted", update_period_s=period_s)
        self.mode = "ok"
        self.energy_j = 100.0
        self.release = threading.Event()
        self.reads = 0

    def domains(self):
        return [self.info]

    def read(self):
        self.reads += 1
        if self.mode == "raise":
            raise OSError(5, "Input/output error")
        if self.mode == "hang":
            self.release.wait(10)
        if self.mode == "nan":
            return {self.domain: DomainReading(energy_j=math.nan)}
        if self.mode == "negative":
            return {self.domain: DomainReading(power_w=-3.0) if not self.counter else DomainReading(energy_j=-1.0)}
        if self.mode == "decrease":
            return {self.domain: DomainReading(energy_j=self.energy_j - 50.0)}
        if self.mode == "missing":
            return {}
        self.energy_j += 1.0
        return {self.domain: DomainReading(energy_j=self.energy_j)}

    def state(self):
        return {"mode": self.mode}

    def close(self):
        pass


def wait_for(cond, timeout_s=3.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_named_daemon_thread_starts_stops_promptly_and_idempotently():
    # A sampler stopped by an earlier test may still be finishing its last sleep
    # (it exits within one interval of stop()), so count only the threads this one adds.
    before = {t for t in threading.enumerate() if t.name == THREAD_NAME}
    s = Sampler([steady()], interval_s=0.05)
    s.start()
    s.start()
    ours = [t for t in threading.enumerate() if t.name == THREAD_NAME and t not in before]
    assert len(ours) == 1
    assert all(t.daemon for t in s.threads())
    assert wait_for(lambda: s.ticks >= 3)
    t0 = time.monotonic()
    s.stop()
    s.stop()
    assert time.monotonic() - t0 < 0.3
    assert not s.running
    assert wait_for(lambda: not ours[0].is_alive(), 1.0)  # gone within one interval
    n = len(s.series["gpu0"].points)
    time.sleep(0.15)
    assert len(s.series["gpu0"].points) == n  # nothing lands after stop()


def test_interval_and_cumulative_series():
    s = Sampler([steady(watts=200.0)], interval_s=0.02)
    s.start()
    time.sleep(0.5)
    s.stop()
    pts = s.series["gpu0"].points
    assert 15 <= len(pts) <= 35  # ~25 reads at 50 Hz (dithered ticks)
    (t0, e0, _, _), (t1, e1, _, _) = pts[0], pts[-1]
    assert (e1 - e0) / (t1 - t0) == pytest.approx(200.0, rel=1e-3)


def test_hung_sensor_becomes_gap_and_does_not_stall_others_or_stop():
    hung = ScriptedSensor("stuck")
    s = Sampler([hung, steady()], interval_s=0.02, hang_timeout_s=0.1)
    s.start()
    assert wait_for(lambda: hung.reads >= 2)
    hung.mode = "hang"
    assert wait_for(lambda: s.series["stuck"].gap_open is not None)
    assert s.series["stuck"].gap_open[1].startswith("hung")
    n = len(s.series["gpu0"].points)
    time.sleep(0.2)
    assert len(s.series["gpu0"].points) > n + 4  # the healthy sensor keeps being read
    t0 = time.monotonic()
    s.edge_read()  # a window edge skips the hung sensor instead of blocking
    assert time.monotonic() - t0 < 0.05
    s.stop(timeout_s=1.0)
    assert time.monotonic() - t0 < 1.0
    hung.release.set()


class HangsOnRead:
    """A blocking sensor at the seam (not ``nonblocking``, so it has a reader thread): a fresh
    counter at ``watts`` whose ``hang_on``-th read hangs until ``release`` is set."""

    name = "hangs"

    def __init__(self, domain="pkg", watts=50.0, hang_on=None):
        self.domain = domain
        self.watts = watts
        self.hang_on = hang_on
        self.reads = 0
        self.hanging = 0
        self.release = threading.Event()
        self.t0 = time.monotonic()

    def domains(self):
        return [DomainInfo(self.domain, "cpu", "counter", "hangs", update_period_s=0.0)]

    def read(self):
        self.reads += 1
        if self.reads == self.hang_on:
            self.hanging += 1
            self.release.wait(10)
            self.hanging -= 1
        return {self.domain: DomainReading(energy_j=(time.monotonic() - self.t0) * self.watts)}

    def state(self):
        return {}

    def close(self):
        self.release.set()


def test_first_hang_during_an_edge_read_is_bounded_and_becomes_a_gap():
    # A long interval: no tick reads in the few hundred ms below, so the reads are the edges'.
    sen = HangsOnRead(hang_on=3)
    s = Sampler([sen, steady()], interval_s=5.0)
    s.start()
    try:
        s.edge_read()
        s.edge_read()
        assert sen.reads == 2 and s.series["pkg"].gap_open is None
        good_t = s.series["pkg"].last_good_t
        t0 = time.perf_counter()
        s.edge_read()  # the third read hangs: the edge gives up after its timeout
        waited = time.perf_counter() - t0
        assert sen.hanging == 1
        assert waited < s.edge_timeout_s() + 0.02, waited
        gap = s.series["pkg"].gap_open
        assert gap is not None and gap[0] == good_t and gap[1].startswith("hung: edge read")
        assert s.series["gpu0"].gap_open is None  # the replay domain was read normally
        t0 = time.perf_counter()
        s.edge_read()  # now marked hung: skipped at once
        assert time.perf_counter() - t0 < 0.005
        sen.release.set()  # the read comes back: the gap closes, reads go on
        assert wait_for(lambda: s.series["pkg"].gap_open is None, 1.0)
        s.edge_read()
        assert sen.reads == 4 and s.series["pkg"].gap_open is None
    finally:
        sen.release.set()
        s.stop()


def test_edge_reads_after_stop_still_read_blocking_sensors():
    sen = HangsOnRead()
    s = Sampler([sen], interval_s=0.05)
    s.start()
    assert wait_for(lambda: sen.reads >= 2)
    s.stop()
    n = sen.reads
    time.sleep(0.12)
    assert sen.reads == n  # no tick reads after stop
    s.edge_read()
    assert sen.reads == n + 1
    assert s.series["pkg"].points[-1][3] > time.monotonic() - 0.05


def test_hung_sensor_recovers_and_gap_closes():
    sen = ScriptedSensor("x")
    s = Sampler([sen], interval_s=0.02, hang_timeout_s=0.05)
    s.start()
    assert wait_for(lambda: sen.reads >= 2)
    sen.mode = "hang"
    assert wait_for(lambda: s.series["x"].gap_open is not None)
    sen.mode = "ok"
    sen.release.set()
    assert wait_for(lambda: s.series["x"].gap_open is None and len(s.series["x"].gaps) == 1)
    s.stop()
    _, start, end, reason = s.series["x"].gaps[0]
    assert end > start and reason.startswith("hung")


@pytest.mark.parametrize("mode,reason", [
    ("raise", "raised: OSError"), ("nan", "nan energy"), ("negative", "negative energy"),
    ("decrease", "decreasing counter"), ("missing", "missing from reading")])
def test_bad_readings_become_gaps(mode, reason):
    sen = ScriptedSensor("x")
    s = Sampler([sen, steady()], interval_s=0.02)
    s.start()
    assert wait_for(lambda: sen.reads >= 3)
    sen.mode = mode
    assert wait_for(lambda: s.series["x"].gap_open is not None)
    assert s.series["x"].gap_open[1].startswith(reason)
    good_before = s.series["x"].points[-1][1]
    time.sleep(0.1)
    assert s.series["x"].points[-1][1] == good_before  # nothing bad was stored
    sen.mode = "ok"
    assert wait_for(lambda: s.series["x"].gap_open is None)
    s.stop()
    assert s.series["gpu0"].gap_open is None and not s.series["gpu0"].gaps


def test_counter_reset_is_rebased_not_negative():
    info = DomainInfo("x", "cpu", "counter", "t", update_period_s=0.0)
    ds = DomainSeries(info, 100)
    for k, raw in enumerate([10.0, 20.0, 30.0, 2.0, 5.0, 9.0]):  # reset to ~0 after 30 J
        ds.ingest(float(k), DomainReading(energy_j=raw))
    energies = [p[1] for p in ds.points]
    assert energies == sorted(energies)
    assert energies[-1] == pytest.approx(30.0 + 3.0 + 4.0)
    assert len(ds.gaps) == 1 and ds.gaps[0][3] == "decreasing counter"
    # a single glitch below the old value, then back: no rebase
    ds2 = DomainSeries(info, 100)
    for k, raw in enumerate([10.0, 20.0, 1.0, 25.0]):
        ds2.ingest(float(k), DomainReading(energy_j=raw))
    assert ds2.points[-1][1] == pytest.approx(25.0)


def test_memory_is_bounded_with_many_samples():
    s = Sampler([steady(), steady("cpu", 20.0)], interval_s=0.001, capacity=200)
    s.start()
    assert wait_for(lambda: s.ticks > 600, 10.0)
    s.stop()
    assert all(len(ds.points) == 200 for ds in s.series.values())
    # a week of 10 Hz readings pushed straight through the series: still bounded
    info = DomainInfo("p", "gpu", "polled", "t", update_period_s=0.1)
    ds = DomainSeries(info, 6000)
    for k in range(7 * 24 * 3600 * 10 // 50):  # thinned by 50 to keep the test fast; same code path
        ds.ingest(k * 5.0, DomainReading(power_w=100.0))
        if k % 1000 == 0:
            ds.bad(k * 5.0 + 1, "raised: test")
    assert len(ds.points) == 6000 and len(ds.gaps) <= 512
    e, final = ds.energy_at(ds.points[-1][0] - 2.5)
    assert final and e > 0


def test_phase_lock_finds_counter_update_times():
    sen = steady(watts=100.0, update_period_s=0.1, phase_s=0.0371, report_power=False)
    s = Sampler([sen], interval_s=0.1)
    s.start()
    lock = s.series["gpu0"].phase
    assert wait_for(lambda: lock.locked, 6.0)
    s.stop()
    t = time.monotonic()
    true_last = sen.t0 + 0.0371 + math.floor((t - sen.t0 - 0.0371) / 0.1) * 0.1
    err = (lock.last_update(t) - true_last + 0.05) % 0.1 - 0.05
    assert abs(err) < 0.005


def test_phase_lock_unit():
    lock = PhaseLock(0.1)
    assert lock.last_update(10.0) == pytest.approx(9.95)  # nothing known: half a period stale
    lock.moved(10.02, 10.05)
    lock.moved(10.135, 10.138)
    assert lock.locked
    assert lock.last_update(10.3) == pytest.approx(10.2365, abs=0.003)
    lock.still(10.25, 10.33)
    assert lock.locked


def test_state_is_cached_from_the_reader():
    sen = ScriptedSensor("x")
    s = Sampler([sen], interval_s=0.02)
    s.start()
    assert wait_for(lambda: s.states().get("x") == {"mode": "ok"})
    s.stop()
