"""energy.compare: the ratio of two sides' energy with its interval, and the comparability check.

Everything above the hardware seam is real: trackers, meters, the writer and an MLflow sqlite
store; the comparison reads the runs back from MLflow.  The seam: a replay sensor on an injected
clock whose power per run is drawn from a known, seeded distribution (so the truth is known and
each run's energy is exact), the fake ``pynvml`` driving the real NVML sensor, and the CPU
estimate.
"""

from __future__ import annotations

import math
import random
import sys

import pytest
from mlflow.tracking import MlflowClient

from ipython_energy import comparison as cmp
from ipython_energy.config import from_env
from ipython_energy.meter import Meter
from ipython_energy.runtime import new_tracker
from ipython_energy.sensors.cpu_model import CpuModelSensor
from ipython_energy.sensors.replay import ReplaySensor, ReplayTrace
from tests.faults.faultkit import make_tracker
from tests.sensors.fake_pynvml import FakeGpu, make_fake_pynvml
from tests.sensors.injected_clock import Clock, Ticks

EXPERIMENT = "ipython-energy"


def _tracker(meter, uri):
    config, _ = from_env()
    return new_tracker(config.with_values(tracking_uri=uri, experiment=EXPERIMENT), meter=meter)


def test_a_real_ten_percent_difference_is_found_and_no_difference_is_not_claimed(energy_home, sqlite_uri):
    """Sweeps a, b, c of 8 runs each, interleaved (a b c a b c …), every run exactly 1 s on the
    injected clock at a power drawn for it: a ~ N(100 W, 3 W), b ~ N(90 W, 3 W) (10 % less),
    c ~ N(100 W, 3 W) (no difference)."""
    rng = random.Random(7)
    order = [side for _ in range(8) for side in "abc"]
    watts = [rng.gauss({"a": 100.0, "b": 90.0, "c": 100.0}[side], 3.0) for side in order]
    times = [float(t) for t in range(len(order) + 1)]
    trace = ReplayTrace([x for t in times for x in (t, t + 0.999999)][:-1],
                        {"gpu0_w": [w for w in watts for _ in range(2)] + [watts[-1]]})
    clock = Clock()
    meter = Meter([ReplaySensor(trace, clock=clock)], interval_s=0.05, clock=clock, background=False,
                  idle_power_w=0.0)
    meter.start()
    ticks = Ticks(meter.sampler, clock)
    tracker = _tracker(meter, sqlite_uri)
    sweeps = {side: tracker.start_sweep(side) for side in "abc"}
    energies = {side: [] for side in "abc"}
    for i, side in enumerate(order):
        run = tracker.start_run(f"{side}{i}", sweep=sweeps[side])
        ticks.run(1.0)
        energies[side].append(tracker.end_run(run).energy_j)
    for sweep in sweeps.values():
        tracker.end_sweep(sweep)
    assert tracker.flush(120)
    truth = {side: [w for w, s in zip(watts, order) if s == side] for side in "abc"}
    for side in "abc":  # each run's energy is its drawn power x 1 s
        assert energies[side] == pytest.approx(truth[side], rel=1e-3)

    found = cmp.compare("a", "b", tracking_uri=sqlite_uri, experiment=EXPERIMENT)
    true_ratio = math.fsum(truth["b"]) / math.fsum(truth["a"])
    assert found.ratio == pytest.approx(true_ratio, rel=1e-3)
    lo, hi = found.ratio_ci95
    assert lo < found.ratio < hi and hi < 1.0
    assert found.difference_shown and found.comparable
    assert found.verdict.startswith("b uses 10 % less energy per run than a (95 % CI ")
    assert "comparable: same method" in found.verdict
    assert (found.summary_a.n, found.summary_b.n) == (8, 8)
    print("FIGURE", found.verdict)

    none = cmp.compare("a", "c", tracking_uri=sqlite_uri, experiment=EXPERIMENT)
    assert not none.difference_shown
    assert none.ratio_ci95[0] <= 1.0 <= none.ratio_ci95[1]
    assert none.verdict.startswith("no difference in energy per run can be claimed between a and c")
    print("FIGURE", none.verdict)

    run_id = found.log(sqlite_uri, EXPERIMENT)
    logged = MlflowClient(sqlite_uri).get_run(run_id)
    assert logged.data.tags["energy.kind"] == "comparison"
    assert logged.data.tags["energy.verdict"] == found.verdict
    assert logged.data.metrics["ratio"] == pytest.approx(found.ratio)
    assert logged.data.metrics["ratio_ci95_high"] == pytest.approx(hi)
    assert "<table>" in found._repr_html_() and found.verdict in str(found)
    tracker.close()


def _one_sweep(tracker, name: str, runs: int = 2) -> None:
    sweep = tracker.start_sweep(name)
    for i in range(runs):
        run = tracker.start_run(f"{name}{i}", sweep=sweep)
        run.window.snapshot()
        tracker.end_run(run)
    tracker.end_sweep(sweep)
    assert tracker.flush(120)


def test_a_counter_against_an_estimate_is_never_comparable(energy_home, sqlite_uri, monkeypatch):
    """a: a GPU read through the real NVML sensor (fake ``pynvml``: method ``counter``); b: the
    CPU estimate (method ``estimated``)."""
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml([FakeGpu(uuid="GPU-aaaa", power_w=120.0)]))
    from ipython_energy.sensors.nvml import discover_nvml

    gpus, _ = discover_nvml()
    gpu = make_tracker(gpus, sqlite_uri)
    _one_sweep(gpu, "on-the-gpu")
    gpu.close()
    laptop = make_tracker([CpuModelSensor()], sqlite_uri)
    _one_sweep(laptop, "on-the-laptop")
    laptop.close()
    result = cmp.compare("on-the-gpu", "on-the-laptop", tracking_uri=sqlite_uri, experiment=EXPERIMENT)
    assert not result.comparable
    assert any("a measured figure against an estimate" in r for r in result.reasons)
    assert "NOT comparable" in result.verdict
    print("FIGURE", result.verdict)


def test_different_gpu_models_are_not_comparable_and_one_run_a_side_has_no_interval(
        energy_home, sqlite_uri, monkeypatch):
    from ipython_energy.sensors.nvml import discover_nvml

    made = []
    for model, name in (("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA A100-SXM4-40GB", "a100")):
        monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml([FakeGpu(uuid=f"GPU-{name}", name=model)]))
        gpus, _ = discover_nvml()
        tracker = make_tracker(gpus, sqlite_uri)
        _one_sweep(tracker, name, runs=1)
        made.append(tracker)
    for tracker in made:
        tracker.close()
    result = cmp.compare("h100", "a100", tracking_uri=sqlite_uri, experiment=EXPERIMENT)
    assert not result.comparable
    (gpu_check,) = [c for c in result.checks if c.what == "GPU model"]
    assert gpu_check.severity == "blocker"
    assert (gpu_check.a, gpu_check.b) == ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB")
    assert result.ratio_ci95 is None
    assert "no interval can be given" in result.verdict
    with pytest.raises(LookupError, match="no run, group or sweep named 'nowhere'"):
        cmp.compare("h100", "nowhere", tracking_uri=sqlite_uri, experiment=EXPERIMENT)


def test_the_public_function_survives_the_import_of_its_module():
    """``energy.compare`` stays the function once the module behind it is imported."""
    import ipython_energy
    import ipython_energy.comparison  # noqa: F401

    assert callable(ipython_energy.compare) and ipython_energy.compare.__module__ == "ipython_energy"


def test_compare_magic_answers_in_a_real_shell(energy_home, sqlite_uri, flat_trace, monkeypatch, capsys):
    """``%energy compare A B`` in a real IPython shell: the verdict as the cell's result, bad
    names a UsageError that names what was not found."""
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.testing.globalipapp import start_ipython

    import ipython_energy

    monkeypatch.setenv("IPYTHON_ENERGY_SENSORS", f"replay:{flat_trace}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    start_ipython()
    ip = InteractiveShell.instance()
    ipython_energy.load_ipython_extension(ip)
    try:
        for name in ("small", "large"):
            ip.run_cell(f"%energy sweep {name}")
            for _ in range(2):
                ip.run_cell("%%energy\nimport time; time.sleep(0.1)")
            ip.run_line_magic("energy", "end sweep")
        result = ip.run_line_magic("energy", "compare small large --log")
        assert result.comparable and result.summary_a.n == 2 and result.summary_b.n == 2
        assert "comparison logged as MLflow run" in capsys.readouterr().out
        with pytest.raises(UsageError, match="no run, group or sweep named 'nowhere'"):
            ip.run_line_magic("energy", "compare small nowhere")
        with pytest.raises(UsageError):
            ip.run_line_magic("energy", "compare small")
    finally:
        ipython_energy.unload_ipython_extension(ip)
