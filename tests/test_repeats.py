"""Repeats (``energy.repeat``, ``%%energy --repeat``) and A/B runs (``energy.compare_callables``).

Everything above the hardware seam is real: trackers, meters, the writer, an MLflow sqlite store
(read back with the MLflow client), a real IPython shell for the magic.  The seam: a replay sensor
on an injected clock whose power in each one-second slot is drawn from a known, seeded
distribution (each run's energy is then exact); the fake ``pynvml`` (a hardware-seam fake of
NVIDIA's driver library) driving the real NVML sensor, whose temperature the test moves, for
``cooldown auto``.
"""

from __future__ import annotations

import math
import random
import sys
import time

import pytest
from IPython.core.error import UsageError

from ipython_energy import repeats, rollup, stats
from ipython_energy import comparison as cmp
from ipython_energy.config import from_env
from ipython_energy.layout import run_row, sweep_header
from ipython_energy.meter import Meter
from ipython_energy.query import SourceReader
from ipython_energy.runtime import new_tracker
from ipython_energy.sensors.replay import ReplaySensor, ReplayTrace
from tests.helpers.mlflow_readback import runs as logged_runs
from tests.sensors.fake_pynvml import FakeGpu, make_fake_pynvml
from tests.sensors.injected_clock import Clock, Ticks

EXPERIMENT = "ipython-energy"


def _slot_trace(watts: list[float], tail_w: float | None = None, tail_s: float = 0.0) -> ReplayTrace:
    """A trace of one-second slots at the given powers (then ``tail_w`` for ``tail_s`` seconds)."""
    times = [float(t) for t in range(len(watts) + 1)]
    t = [x for s in times for x in (s, s + 0.999999)][:-1]
    w = [p for p in watts for _ in range(2)] + [watts[-1]]
    if tail_w is not None:
        end = float(len(watts))
        t += [end + 0.000001, end + tail_s]
        w += [tail_w, tail_w]
    return ReplayTrace(t, {"gpu0_w": w})


def _simulated(trace: ReplayTrace, uri: str, idle_power_w: float = 0.0, **settings):
    """A tracker on a replay sensor and an injected clock; returns (tracker, ticks)."""
    clock = Clock()
    meter = Meter([ReplaySensor(trace, clock=clock)], interval_s=0.05, clock=clock, background=False,
                  idle_power_w=idle_power_w)
    meter.start()
    config, _ = from_env()
    tracker = new_tracker(config.with_values(tracking_uri=uri, experiment=EXPERIMENT, **settings), meter=meter)
    return tracker, Ticks(meter.sampler, clock)


def _group_and_members(uri: str, name: str):
    client, found = logged_runs(uri)
    (parent,) = [r for r in found if r.data.tags.get("energy.kind") == "group"
                 and r.data.tags.get("energy.group") == name]
    uid = parent.data.tags["energy.uid"]
    members = sorted((r for r in found if r.data.tags.get("energy.group_uid") == uid),
                     key=lambda r: int(r.data.tags["energy.order_position"]))
    return client, parent, members, found


# ---- energy.repeat ---------------------------------------------------------------------------------
def test_repeat_logs_each_run_and_the_groups_statistics(energy_home, sqlite_uri):
    """n=5, warmup=1: six runs of exactly 1 s each at powers drawn from N(100 W, 4 W)."""
    rng = random.Random(11)
    watts = [rng.gauss(100.0, 4.0) for _ in range(6)]
    tracker, ticks = _simulated(_slot_trace(watts), sqlite_uri)
    group = repeats.repeat(lambda: ticks.run(1.0), 5, warmup=1, name="fit", tracker=tracker)
    assert tracker.flush(120)

    assert [m.energy_j for m in group.measurements] == pytest.approx(watts[1:], rel=1e-3)
    assert [m.energy_j for m in group.warmup_measurements] == pytest.approx(watts[:1], rel=1e-3)
    client, parent, members, _ = _group_and_members(sqlite_uri, "fit")
    assert len(members) == 6
    assert [int(r.data.tags["energy.order_position"]) for r in members] == [1, 2, 3, 4, 5, 6]
    warm, *measured = members
    assert warm.data.tags["energy.warmup"] == "true" and "energy.repeat" not in warm.data.tags
    assert warm.info.run_name == "fit warm-up 1"
    assert [r.data.tags["energy.repeat"] for r in measured] == ["1", "2", "3", "4", "5"]
    assert [r.info.run_name for r in measured] == [f"fit #{i}" for i in range(1, 6)]
    for r in members:  # outside a sweep: the group parent's MLflow children
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["energy.order"] == "sequential"
        assert r.data.tags["energy.cooldown"] == "none" and r.data.metrics["cooldown_s"] == 0.0
        assert r.data.tags["energy.kind"] == "run"

    # the group's metrics are the statistics of the children's energy_j as MLflow has them
    truth = stats.summarize(r.data.metrics["energy_j"] for r in measured)
    m = parent.data.metrics
    assert m["group_n"] == 5
    assert m["group_mean_j"] == pytest.approx(truth.mean, rel=1e-12)
    assert m["group_sd_j"] == pytest.approx(truth.sd, rel=1e-9)
    assert m["group_cv"] == pytest.approx(truth.sd / truth.mean, rel=1e-9)
    assert (m["group_ci95_low_j"], m["group_ci95_high_j"]) == pytest.approx(truth.ci95, rel=1e-9)
    tags = parent.data.tags
    assert (tags["energy.kind"], tags["energy.repeats"], tags["energy.warmups"]) == ("group", "5", "1")
    assert parent.info.status == "FINISHED"
    assert group.uid == tags["energy.uid"]
    text = str(group)
    assert text.startswith("group fit: 5 repeats, ") and "95 % CI" in text and "1 warm-up" in text
    assert f"cv {truth.cv * 100:.1f} %" in text
    print("FIGURE", text)
    tracker.close()


def test_repeat_declares_units_and_takes_the_units_mean(energy_home, sqlite_uri):
    tracker, ticks = _simulated(_slot_trace([80.0, 90.0, 100.0]), sqlite_uri)
    group = repeats.repeat(lambda: ticks.run(1.0), 3, name="per-sample", units=(10, "samples"), tracker=tracker)
    assert tracker.flush(120)
    _, parent, members, _ = _group_and_members(sqlite_uri, "per-sample")
    assert parent.data.metrics["group_mean_per_samples_j"] == pytest.approx(9.0, rel=1e-3)
    assert parent.data.tags["energy.unit"] == "samples"
    assert "9 J/samples" in str(group)
    tracker.close()


@pytest.mark.parametrize("kwargs,error,message", [
    ({"n": 0}, ValueError, "n must be between 1"),
    ({"n": 2.5}, TypeError, "whole number"),
    ({"warmup": -1}, ValueError, "warmup must be between 0"),
    ({"cooldown": "soon"}, ValueError, "not a duration"),
    ({"cooldown": [3]}, TypeError, "cooldown must be"),
])
def test_bad_python_arguments_raise_before_anything_runs(energy_home, sqlite_uri, kwargs, error, message):
    tracker, _ = _simulated(_slot_trace([10.0]), sqlite_uri)
    calls = []
    with pytest.raises(error, match=message):
        repeats.repeat(lambda: calls.append(1), tracker=tracker, **kwargs)
    assert calls == []
    tracker.close()


def test_a_failing_repeat_fails_its_run_and_the_group_and_propagates(energy_home, sqlite_uri):
    tracker, ticks = _simulated(_slot_trace([50.0, 60.0, 70.0]), sqlite_uri)
    seen = []

    def flaky():
        ticks.run(1.0)
        seen.append(1)
        if len(seen) == 2:
            raise RuntimeError("bad batch")

    with pytest.raises(RuntimeError, match="bad batch"):
        repeats.repeat(flaky, 3, name="flaky", tracker=tracker)
    assert tracker.flush(120)
    _, parent, members, _ = _group_and_members(sqlite_uri, "flaky")
    assert [r.info.status for r in members] == ["FINISHED", "FAILED"]
    assert parent.info.status == "FAILED" and parent.data.metrics["group_n"] == 1
    tracker.close()


# ---- inside a sweep --------------------------------------------------------------------------------
def test_inside_a_sweep_every_repeat_is_a_run_of_it_and_the_group_is_not(energy_home, sqlite_uri):
    tracker, ticks = _simulated(_slot_trace([40.0, 50.0, 60.0, 70.0, 80.0]), sqlite_uri)
    sweep = tracker.start_sweep("grid")
    with tracker.start_run("plain"):
        ticks.run(1.0)
    repeats.repeat(lambda: ticks.run(1.0), 3, warmup=1, name="lr=0.1", tracker=tracker)
    tracker.end_sweep(sweep)
    assert tracker.flush(120)

    client, group, members, found = _group_and_members(sqlite_uri, "lr=0.1")
    (parent,) = [r for r in found if r.data.tags["energy.kind"] == "sweep"]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    runs = [r for r in children if r.data.tags["energy.kind"] == "run"]
    assert group in children and len(runs) == 5  # the group parent is a child, not a run
    assert {r.info.run_id for r in members} <= {r.info.run_id for r in runs}
    assert sorted(int(r.data.tags["energy.run_index"]) for r in runs) == [1, 2, 3, 4, 5]
    assert "energy.run_index" not in group.data.tags
    energies = [r.data.metrics["energy_j"] for r in sorted(runs, key=lambda r: int(r.data.tags["energy.run_index"]))]
    assert energies == pytest.approx([40.0, 50.0, 60.0, 70.0, 80.0], rel=1e-3)
    m = parent.data.metrics
    assert m["sweep_runs"] == 5
    assert m["sweep_runs_energy_j"] == pytest.approx(math.fsum(energies), rel=1e-12)
    assert sweep.finished_runs == 5 and sweep.total_j == pytest.approx(m["sweep_energy_j"], rel=1e-12)
    # the sidebar's and the chart's roll-up, from every child MLflow lists, leaves the group out
    data = rollup.build_sweep_data(sweep_header(parent), [run_row(r) for r in children])
    assert data["totals"]["runs"] == 5 and data["totals"]["ended_runs"] == 5
    sidebar = SourceReader(sqlite_uri).sweep_data(EXPERIMENT, parent.info.run_id)  # what the server sends
    assert [row["name"] for row in sidebar["runs"]] == [r.info.run_name for r in
                                                        sorted(runs, key=lambda r: int(r.data.tags["energy.run_index"]))]
    assert sidebar["totals"]["ended_energy_j"] == pytest.approx(m["sweep_energy_j"], rel=1e-12)
    # the comparison finds the group's repeats by energy.group_uid, the warm-up left out
    side = cmp.resolve(client, parent.info.experiment_id, "lr=0.1", "a")
    assert side.kind == "group" and len(side.runs) == 3
    tracker.close()


# ---- A/B ---------------------------------------------------------------------------------------------
def test_compare_callables_interleaved_finds_a_ten_percent_difference(energy_home, sqlite_uri):
    """8 repeats a side after 1 warm-up each, interleaved: a ~ N(100 W, 3 W), b ~ N(90 W, 3 W)."""
    order = repeats.plan(["a", "b"], 8, 1, "interleaved")
    assert [s.group for s in order] == ["a", "b"] * 9
    rng = random.Random(5)
    watts = [rng.gauss({"a": 100.0, "b": 90.0}[s.group], 3.0) for s in order]
    tracker, ticks = _simulated(_slot_trace(watts), sqlite_uri)
    result = repeats.compare_callables({"a": lambda: ticks.run(1.0), "b": lambda: ticks.run(1.0)}, 8,
                                       warmup=1, tracker=tracker)
    _, found = logged_runs(sqlite_uri)
    executed = sorted((r for r in found if "energy.order_position" in r.data.tags),
                      key=lambda r: int(r.data.tags["energy.order_position"]))
    assert [r.data.tags["energy.group"] for r in executed] == ["a", "b"] * 9
    assert len({r.data.tags["energy.comparison_id"] for r in executed}) == 1
    truth_a = [w for w, s in zip(watts, order) if s.group == "a" and not s.warmup]
    truth_b = [w for w, s in zip(watts, order) if s.group == "b" and not s.warmup]
    assert result.ratio == pytest.approx(math.fsum(truth_b) / math.fsum(truth_a), rel=1e-3)
    lo, hi = result.ratio_ci95
    assert lo < result.ratio < hi < 1.0 and result.difference_shown and result.comparable
    assert (result.summary_a.n, result.summary_b.n) == (8, 8)
    (order_check,) = [c for c in result.checks if c.what == "run order"]
    assert order_check.severity == "same" and order_check.note == "interleaved order"
    # the verdict states what this sample shows (the drawn powers' own ratio, not the 0.9 they were drawn at)
    assert result.verdict.startswith(f"b uses {(1 - result.ratio) * 100:.0f} % less energy per run than a (95 % CI ")
    assert set(result.groups) == {"a", "b"} and result.groups["b"].summary.n == 8
    print("FIGURE", result.verdict)
    tracker.close()


def test_shuffled_is_reproducible_and_blocked_runs_each_side_together(energy_home, sqlite_uri):
    shuffled = repeats.plan(["a", "b"], 6, 1, "shuffled", seed=3)
    assert shuffled == repeats.plan(["a", "b"], 6, 1, "shuffled", seed=3)
    assert any(repeats.plan(["a", "b"], 6, 1, "shuffled", seed=s) != shuffled for s in range(4, 10))
    for k in range(0, len(shuffled), 2):  # balanced: each round runs both sides once
        assert {s.group for s in shuffled[k:k + 2]} == {"a", "b"}
    assert [(s.group, s.warmup) for s in repeats.plan(["a", "b"], 2, 1, "blocked")] == [
        ("a", True), ("a", False), ("a", False), ("b", True), ("b", False), ("b", False)]

    tracker, ticks = _simulated(_slot_trace([100.0] * 10), sqlite_uri)
    fns = {"a": lambda: ticks.run(1.0), "b": lambda: ticks.run(1.0)}
    result = repeats.compare_callables(fns, 3, order="shuffled", seed=3, tracker=tracker)
    _, parent, members, _ = _group_and_members(sqlite_uri, "a")
    _, _, others, _ = _group_and_members(sqlite_uri, "b")
    executed = sorted(members + others, key=lambda r: int(r.data.tags["energy.order_position"]))
    assert [r.data.tags["energy.group"] for r in executed] == [
        s.group for s in repeats.plan(["a", "b"], 3, 0, "shuffled", seed=3)]
    assert {r.data.tags["energy.order"] for r in executed} == {"shuffled"}
    assert [c.note for c in result.checks if c.what == "run order"] == ["shuffled order"]
    with pytest.raises(ValueError, match="order must be one of"):
        repeats.compare_callables(fns, 3, order="random", tracker=tracker)
    with pytest.raises(ValueError, match="two names"):
        repeats.compare_callables({"a": fns["a"]}, 3, tracker=tracker)
    tracker.close()


# ---- cooldown ------------------------------------------------------------------------------------------
def test_cooldown_auto_without_gpus_waits_for_the_power_to_come_back(energy_home, sqlite_uri):
    """The replay trace: 200 W in the run's slot, 200 W for 3 s after it, then 50 W (the idle
    baseline); with a 1 s bound the wait stops at the bound and says so."""
    trace = ReplayTrace([0.0, 0.999999, 1.0, 3.999999, 4.0, 1000.0], {"gpu0_w": [200, 200, 200, 200, 50, 50]})
    tracker, ticks = _simulated(trace, sqlite_uri, idle_power_w=50.0)
    waited = repeats.cool_down(tracker, repeats.Cooldown("auto"), sleep=ticks.run)
    assert waited.seconds == pytest.approx(4.0, abs=0.6)
    assert waited.text.startswith("auto: power 50.0 W ≤ 50.0+2.5 W after ")

    bounded, ticks2 = _simulated(trace, sqlite_uri, idle_power_w=50.0, cooldown_max_s=1.0)
    group = repeats.repeat(lambda: ticks2.run(0.5), 1, cooldown="auto", name="bounded", tracker=bounded,
                           sleep=ticks2.run)
    assert group.waits[0].seconds == pytest.approx(1.0, abs=0.01)
    assert group.waits[0].text.startswith("auto: timed out after 1 s (power 200.0 W > 50.0+2.5 W)")
    assert bounded.flush(120)
    _, _, (run,), _ = _group_and_members(sqlite_uri, "bounded")
    assert run.data.metrics["cooldown_s"] == pytest.approx(1.0, abs=0.01)
    assert run.data.tags["energy.cooldown"] == group.waits[0].text
    for t in (tracker, bounded):
        t.close()


def _gpu_tracker(monkeypatch, uri, gpu, **settings):
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml([gpu]))
    from ipython_energy.sensors.nvml import discover_nvml

    sensors, _ = discover_nvml()
    config, _ = from_env()
    config = config.with_values(tracking_uri=uri, experiment=EXPERIMENT, **settings)
    tracker = new_tracker(config, meter=Meter(sensors, interval_s=0.05, idle_power_w=60.0))
    deadline = time.monotonic() + 30
    while "gpu0" not in tracker.meter.sampler.coolest_temperatures():
        assert time.monotonic() < deadline, "the sampler never read the GPU's temperature"
        time.sleep(0.1)
    return tracker


def test_cooldown_auto_waits_for_the_gpu_to_cool_to_near_its_idle_temperature(energy_home, sqlite_uri,
                                                                               monkeypatch):
    """The fake GPU idles at 38 °C at load, is at 50 °C when the wait begins and cools by 1 °C each
    0.5 s of waiting; margin 3 °C: the wait ends at 41 °C or below (the sensor refreshes its
    temperature every 2 s, so a little later).  The start temperature is on the run."""
    gpu = FakeGpu(uuid="GPU-cool", power_w=120.0, temperature_c=38)
    tracker = _gpu_tracker(monkeypatch, sqlite_uri, gpu)
    assert tracker.meter.sampler.coolest_temperatures() == {"gpu0": 38.0}
    gpu.temperature_c = 50
    time.sleep(2.5)  # the sampler has seen it hot

    def cooling(seconds):
        time.sleep(seconds)
        gpu.temperature_c = max(38, gpu.temperature_c - 1)

    group = repeats.repeat(lambda: time.sleep(0.2), 1, cooldown="auto", name="cooled", tracker=tracker,
                           sleep=cooling)
    waited = group.waits[0]
    assert 2.0 <= waited.seconds <= 30.0
    assert waited.text.startswith("auto: gpu0 ") and "≤ 38+3 °C after " in waited.text
    now = float(waited.text.split()[2])
    assert now <= 41
    assert tracker.flush(120)
    _, parent, (run,), _ = _group_and_members(sqlite_uri, "cooled")
    assert run.data.metrics["cooldown_s"] == pytest.approx(waited.seconds)
    assert run.data.tags["energy.cooldown"] == waited.text
    assert run.data.tags["energy.start_temperature_c"].startswith("gpu0=")
    assert parent.data.tags["energy.cooldown"] == "auto"
    print("FIGURE", waited.text)
    tracker.close()


def test_cooldown_auto_gives_up_at_cooldown_max_s_and_says_so(energy_home, sqlite_uri, monkeypatch):
    gpu = FakeGpu(uuid="GPU-hot", power_w=120.0, temperature_c=38)
    tracker = _gpu_tracker(monkeypatch, sqlite_uri, gpu, cooldown_max_s=1.5)
    gpu.temperature_c = 60
    time.sleep(2.5)
    waited = repeats.cool_down(tracker, repeats.Cooldown("auto"))
    assert 1.5 <= waited.seconds <= 10.0
    assert waited.text == "auto: timed out after 1.5 s (gpu0 60 °C > 38+3 °C)"
    tracker.close()


def test_fixed_cooldown_waits_that_long(energy_home, sqlite_uri):
    tracker, ticks = _simulated(_slot_trace([10.0] * 5), sqlite_uri)
    assert repeats.parse_cooldown("2s") == repeats.Cooldown("fixed", 2.0)
    assert repeats.parse_cooldown("500ms") == repeats.Cooldown("fixed", 0.5)
    assert repeats.parse_cooldown(None) == repeats.parse_cooldown(0) == repeats.NO_COOLDOWN
    waited = repeats.cool_down(tracker, repeats.parse_cooldown("2s"), sleep=ticks.run)
    assert waited == (2.0, "fixed 2 s")
    tracker.close()


# ---- %%energy --repeat ----------------------------------------------------------------------------------
def test_cell_magic_repeats_the_cell_as_one_group(ip, sqlite_uri, capsys):
    import ipython_energy

    capsys.readouterr()
    result = ip.run_cell("%%energy --repeat 3 --warmup 1 --run fit --units 100 -o g\n"
                         "import time\ncalls = globals().get('calls', 0) + 1\ntime.sleep(0.05)\ncalls")
    assert result.success and result.result == 4  # the last run's value
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("ipython-energy")]  # one line, not four
    assert line.startswith("ipython-energy: group fit: 3 repeats, ")
    assert "1 warm-up" in line and "/samples" in line
    group = ip.user_ns["g"]
    assert isinstance(group, repeats.Group) and len(group.measurements) == 3
    assert ipython_energy.flush(120)
    _, parent, members, found = _group_and_members(sqlite_uri, "fit")
    assert [r.info.run_name for r in members] == ["fit warm-up 1", "fit #1", "fit #2", "fit #3"]
    assert parent.data.metrics["group_n"] == 3
    assert parent.data.metrics["group_mean_per_samples_j"] == pytest.approx(group.per_unit().mean)
    assert len(found) == 5


@pytest.mark.parametrize("args,message", [
    ("--repeat 0", "--repeat takes a whole number of at least 1"),
    ("--repeat 3 --warmup -1", "--warmup takes a whole number of at least 0"),
    ("--repeat 3 --cooldown soon", "--cooldown: .*not a duration"),
    ("--warmup 1", "go with --repeat"),
    ("--repeat 2 --live", "does not combine"),
])
def test_bad_repeat_arguments_raise_usage_error_and_run_nothing(ip, sqlite_uri, args, message):
    import ipython_energy

    with pytest.raises(UsageError, match=message):
        ip.run_cell_magic("energy", args, "ran = True")
    assert "ran" not in ip.user_ns
    assert ipython_energy.flush(60)
    assert logged_runs(sqlite_uri)[1] == []
    # nothing lost: the next good cell measures and logs as usual
    assert ip.run_cell("%%energy --repeat 2 --run after\nx = 1").success
    assert ipython_energy.flush(120)
    assert len(_group_and_members(sqlite_uri, "after")[2]) == 2
