"""Window edges and sampler cost with real NVML GPUs: what the reader-thread hand-off costs.

On a machine with an NVIDIA GPU and ``pynvml`` (nvidia-ml-py), through the real NVML backend:

* the time of one NVML read (``NvmlSensor.read_values``: energy counter + power) on this thread;
* ``Meter.begin()`` / ``Window.end()`` latency over many short windows (each edge hands the GPU
  reads to the sensors' reader threads and waits for them, at most ``Sampler.edge_timeout_s()``),
  and how many edges timed out (recorded as ``hung`` gaps);
* the process CPU of the sampler at 10 Hz with one window open (sampler thread + one reader
  thread per GPU), over ``--idle`` seconds in which the main thread only sleeps, and the CPU
  of the sampler's own threads (``Sampler.cpu_time_s``) over the same stretch;
* how often the sampler calls ``nvmlDeviceGetTotalEnergyConsumption`` and
  ``nvmlDeviceGetPowerUsage`` per GPU per second in the background (counted by wrapping the
  two ``pynvml`` functions, which the backend looks up at each call), and how often at the
  window edges;
* ``hung`` gaps: at the edges, and in the long window over the idle stretch.

It skips cleanly (exit 0, with a message) where NVML is not usable.

Run:  python bench/nvml_edges.py [--windows 300] [--idle 20] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipython_energy.meter import Meter  # noqa: E402
from ipython_energy.sensors import SensorError, discover  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=300)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of sampler-only CPU measurement")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        found = discover("nvml")
    except SensorError as exc:
        print(f"skipped: {exc}")
        return 0
    sensors = found.sensors
    out: dict = {"gpus": [s.domains()[0].details.get("model", "?") for s in sensors]}
    import pynvml

    calls = {"counter": 0, "power": 0}

    def counted(name, key):
        fn = getattr(pynvml, name)

        def wrapper(*a, **kw):
            calls[key] += 1
            return fn(*a, **kw)

        setattr(pynvml, name, wrapper)

    counted("nvmlDeviceGetTotalEnergyConsumption", "counter")
    counted("nvmlDeviceGetPowerUsage", "power")
    s0 = sensors[0]
    reads = []
    for _ in range(200):
        t0 = time.perf_counter()
        s0.read_values()
        reads.append(time.perf_counter() - t0)
    out["nvml_read_us"] = {"p50": pct(reads, 0.5) * 1e6, "p95": pct(reads, 0.95) * 1e6, "max": max(reads) * 1e6}

    meter = Meter(sensors, interval_s=0.1, idle_power_w=0.0)
    meter.start()
    time.sleep(3.0)  # counter update phase found, usual round trip known
    n_gpus = len(sensors)
    c_bg, t_bg = dict(calls), time.monotonic()
    time.sleep(5.0)
    dt = time.monotonic() - t_bg
    out["background_counter_reads_per_s_per_gpu"] = (calls["counter"] - c_bg["counter"]) / dt / n_gpus
    out["background_power_reads_per_s_per_gpu"] = (calls["power"] - c_bg["power"]) / dt / n_gpus
    c_edges = dict(calls)
    begins, ends, gaps = [], [], 0
    for _ in range(args.windows):
        t0 = time.perf_counter()
        w = meter.begin("edge")
        t1 = time.perf_counter()
        time.sleep(0.002)
        t2 = time.perf_counter()
        m = w.end()
        t3 = time.perf_counter()
        begins.append(t1 - t0)
        ends.append(t3 - t2)
        gaps += sum(1 for p in m.provenance.values() for g in p.gaps if g.reason.startswith("hung"))
        time.sleep(0.01)
    out["begin_us"] = {"p50": pct(begins, 0.5) * 1e6, "p95": pct(begins, 0.95) * 1e6, "max": max(begins) * 1e6}
    out["end_us"] = {"p50": pct(ends, 0.5) * 1e6, "p95": pct(ends, 0.95) * 1e6, "max": max(ends) * 1e6}
    out["edge_hung_gaps"] = gaps
    edges_s = sum(begins) + sum(ends) + 0.012 * args.windows  # about the time the edge loop took
    out["counter_reads_per_edge"] = ((calls["counter"] - c_edges["counter"])
                                     - out["background_counter_reads_per_s_per_gpu"] * n_gpus * edges_s) / (2 * args.windows)
    out["edge_timeout_ms"] = meter.sampler.edge_timeout_s() * 1e3
    out["round_trip_us"] = [
        {"p50": pct(rts, 0.5) * 1e6, "max": max(rts) * 1e6}
        for rts in meter.sampler.round_trips_s().values()
    ]

    w = meter.begin("idle")
    time.sleep(1.0)
    c0, t0, s0, k0 = time.process_time(), time.monotonic(), meter.sampler.cpu_time_s(), dict(calls)
    time.sleep(args.idle)
    c1, t1, s1 = time.process_time(), time.monotonic(), meter.sampler.cpu_time_s()
    m = w.end()
    out["sampler_cpu_pct_of_one_core"] = (c1 - c0) / (t1 - t0) * 100
    out["sampler_threads_cpu_pct_of_one_core"] = (s1 - s0) / (t1 - t0) * 100
    out["idle_counter_reads_per_s_per_gpu"] = (calls["counter"] - k0["counter"]) / (t1 - t0) / n_gpus
    out["idle_power_reads_per_s_per_gpu"] = (calls["power"] - k0["power"]) / (t1 - t0) / n_gpus
    out["idle_window_hung_gaps"] = sum(1 for p in m.provenance.values() for g in p.gaps if g.reason.startswith("hung"))
    out["idle_window_coverage"] = min(p.coverage for p in m.provenance.values())
    out["idle_window_j"] = m.energy_j
    out["idle_window_power_w"] = m.power_mean_w
    meter.close()
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
