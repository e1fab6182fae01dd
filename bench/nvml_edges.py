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
* ``hung`` gaps: at the edges, and in the long window over the idle stretch;
* how often the sampler reads the GPU's utilisation (``nvmlDeviceGetUtilizationRates``, meant to
  be every 0.2 s, i.e. at most every other sample) in the background;
* **candidate calls side by side** (issue 11, item 5: the energy counter costs ~3 ms of CPU per
  read on H100/H200), each called ``--calls`` times on this thread, CPU (``thread_time``) and
  wall time per call: the two calls the sampler makes now (``nvmlDeviceGetTotalEnergyConsumption``,
  ``nvmlDeviceGetPowerUsage``), the utilisation read, ``nvmlDeviceGetFieldValues`` with the energy
  field alone (``NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION``, and the newer ``NVML_FI_DEV_ENERGY``)
  and with energy and power together (``NVML_FI_DEV_POWER_INSTANT`` / ``_AVERAGE``: one call
  instead of two), and ``nvmlDeviceGetSamples`` for the driver's buffers of power and
  utilisation samples (read rarely, they could replace per-tick power and utilisation reads).
  Then, for 2 s of reads every 5 ms, whether the field's energy agrees with the counter call,
  how often each changes, and whether the field's ``timestamp`` moves only when the value does
  (then it is the counter's update time, which the sampler now has to estimate);
* **the schedules' cost per GPU** (``schedule_estimate``): calls per second of each kind times
  its mean CPU per call, as % of one core, for the old schedule (counter + power at every
  tick, always), the idle schedule (the same while a window is open; every
  ``nvml_idle_interval_s`` otherwise) and the same with the two-field ``nvmlDeviceGetFieldValues``
  in place of the two calls; beside it, the idle schedule as run: NVML calls per second per GPU
  and the sampler's CPU with no window open (``idle_schedule_*``).

It skips cleanly (exit 0, with a message) where NVML is not usable.

Run:  python bench/nvml_edges.py [--windows 300] [--idle 20] [--calls 200] [--json OUT.json]
      python bench/nvml_edges.py --only-candidates      # the candidate calls alone, ~10 s
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


def _field_value(v) -> float | None:
    """A ``c_nvmlFieldValue_t``'s value as a number (None when its call failed)."""
    if getattr(v, "nvmlReturn", 0) != 0:
        return None
    kind = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
    return float(getattr(v.value, kind.get(int(v.valueType), "ullVal")))


def candidate_calls(nv, handle, calls: int) -> dict:
    """Each candidate call ``calls`` times on this thread: CPU and wall time per call (p50 / p95 /
    max, µs), or why it cannot be used on this GPU."""
    e_id = getattr(nv, "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 83)
    e2_id = getattr(nv, "NVML_FI_DEV_ENERGY", 191)
    p_inst = getattr(nv, "NVML_FI_DEV_POWER_INSTANT", 186)
    p_avg = getattr(nv, "NVML_FI_DEV_POWER_AVERAGE", 185)
    gpu_samples = getattr(nv, "NVML_GPU_UTILIZATION_SAMPLES", 1)
    power_samples = getattr(nv, "NVML_TOTAL_POWER_SAMPLES", 0)
    candidates = {
        "nvmlDeviceGetTotalEnergyConsumption (now, every sample)":
            lambda: nv.nvmlDeviceGetTotalEnergyConsumption(handle),
        "nvmlDeviceGetPowerUsage (now, every sample)": lambda: nv.nvmlDeviceGetPowerUsage(handle),
        "nvmlDeviceGetUtilizationRates (now, every 0.2 s)": lambda: nv.nvmlDeviceGetUtilizationRates(handle),
        "nvmlDeviceGetTemperature (now, every 2 s)":
            lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU),
        "nvmlDeviceGetFieldValues [TOTAL_ENERGY_CONSUMPTION]": lambda: nv.nvmlDeviceGetFieldValues(handle, [e_id]),
        "nvmlDeviceGetFieldValues [ENERGY]": lambda: nv.nvmlDeviceGetFieldValues(handle, [e2_id]),
        "nvmlDeviceGetFieldValues [TOTAL_ENERGY_CONSUMPTION, POWER_INSTANT]":
            lambda: nv.nvmlDeviceGetFieldValues(handle, [e_id, p_inst]),
        "nvmlDeviceGetFieldValues [TOTAL_ENERGY_CONSUMPTION, POWER_INSTANT, POWER_AVERAGE]":
            lambda: nv.nvmlDeviceGetFieldValues(handle, [e_id, p_inst, p_avg]),
        "nvmlDeviceGetSamples GPU_UTILIZATION (the samples since the last call)": None,
        "nvmlDeviceGetSamples TOTAL_POWER (the samples since the last call)": None,
    }
    out: dict = {}
    for name, fn in candidates.items():
        if fn is None:
            kind = gpu_samples if "UTILIZATION" in name else power_samples
            last = {"ts": 0}

            def fn(kind=kind, last=last):
                # the driver's timestamps are µs; ask for what came since the newest one seen
                _, samples = nv.nvmlDeviceGetSamples(handle, kind, last["ts"])
                if samples:
                    last["ts"] = max(int(x.timeStamp) for x in samples)
                return samples
        try:
            result = fn()
            if "FieldValues" in name and any(getattr(v, "nvmlReturn", 0) != 0 for v in result):
                raise RuntimeError("field not supported: " + ", ".join(str(v.nvmlReturn) for v in result))
        except Exception as exc:  # a candidate this GPU or driver does not have
            out[name] = {"unsupported": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        cpu, wall = [], []
        for _ in range(calls):
            c0, w0 = time.thread_time(), time.perf_counter()
            fn()
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - w0)
        out[name] = {
            "cpu_us": {"p50": pct(cpu, 0.5) * 1e6, "p95": pct(cpu, 0.95) * 1e6, "max": max(cpu) * 1e6,
                       "mean": statistics.mean(cpu) * 1e6},
            "wall_us": {"p50": pct(wall, 0.5) * 1e6, "p95": pct(wall, 0.95) * 1e6, "max": max(wall) * 1e6},
            "cpu_pct_of_core_at_10hz": statistics.mean(cpu) * 10 * 100,
        }
    return out


#: The candidates each schedule calls, by the names above.
COUNTER = "nvmlDeviceGetTotalEnergyConsumption (now, every sample)"
POWER = "nvmlDeviceGetPowerUsage (now, every sample)"
UTIL = "nvmlDeviceGetUtilizationRates (now, every 0.2 s)"
TEMP = "nvmlDeviceGetTemperature (now, every 2 s)"
FIELDS = "nvmlDeviceGetFieldValues [TOTAL_ENERGY_CONSUMPTION, POWER_INSTANT]"


def schedule_estimate(candidates: dict, interval_s: float = 0.1, idle_interval_s: float = 2.0,
                      util_period_s: float = 0.2, state_s: float = 2.0) -> dict:
    """% of one core per GPU that each schedule's NVML calls cost: calls per second times the mean
    CPU per call measured above (None where a call is unsupported).  The old schedule reads counter
    and power at every tick, always; the idle schedule does so while a window is open and every
    ``idle_interval_s`` otherwise (utilisation with each read then, temperature every ``state_s``
    either way); ``+fields`` takes the two-field ``nvmlDeviceGetFieldValues`` instead of the
    counter and power calls."""
    def cost_s(name):
        c = candidates.get(name, {})
        return c["cpu_us"]["mean"] * 1e-6 if "cpu_us" in c else None

    counter, power, util, temp, fields = (cost_s(n) for n in (COUNTER, POWER, UTIL, TEMP, FIELDS))

    def share(read_s, every_s):
        if read_s is None or util is None or temp is None:
            return None
        per_s = read_s / every_s + util / max(every_s, util_period_s) + temp / state_s
        return round(per_s * 100, 3)

    both = None if counter is None or power is None else counter + power
    out = {
        "old schedule (every tick always), % of a core per GPU": share(both, interval_s),
        "idle schedule, no window open, % of a core per GPU": share(both, idle_interval_s),
        "idle schedule, window open, % of a core per GPU": share(both, interval_s),
        "idle schedule + fields, no window open": share(fields, idle_interval_s),
        "idle schedule + fields, window open": share(fields, interval_s),
    }
    return out


def field_vs_counter(nv, handle, seconds: float = 2.0, every_s: float = 0.005) -> dict:
    """Read the counter call and the energy field side by side every ``every_s``: do they agree,
    how often does each change, and does the field's timestamp move only when its value does?"""
    e_id = getattr(nv, "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 83)
    try:
        nv.nvmlDeviceGetFieldValues(handle, [e_id])
    except Exception as exc:
        return {"unsupported": f"{type(exc).__name__}: {exc}"[:200]}
    rows = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        counter = nv.nvmlDeviceGetTotalEnergyConsumption(handle)
        (v,) = nv.nvmlDeviceGetFieldValues(handle, [e_id])
        rows.append((t, counter, _field_value(v), int(v.timestamp)))
        time.sleep(every_s)

    def change_intervals(col):
        times = [rows[i][0] for i in range(1, len(rows)) if rows[i][col] != rows[i - 1][col]]
        return [b - a for a, b in zip(times, times[1:])]

    counter_iv, field_iv = change_intervals(1), change_intervals(2)
    ts_moves = sum(1 for i in range(1, len(rows)) if rows[i][3] != rows[i - 1][3])
    value_moves = sum(1 for i in range(1, len(rows)) if rows[i][2] != rows[i - 1][2])
    both = sum(1 for i in range(1, len(rows)) if rows[i][3] != rows[i - 1][3] and rows[i][2] != rows[i - 1][2])
    diffs = [abs(r[2] - r[1]) for r in rows if r[2] is not None]
    return {
        "reads": len(rows),
        "counter_change_interval_ms_median": statistics.median(counter_iv) * 1e3 if counter_iv else None,
        "field_change_interval_ms_median": statistics.median(field_iv) * 1e3 if field_iv else None,
        "field_minus_counter_mj_max_abs": max(diffs) if diffs else None,
        "field_timestamp_moves": ts_moves,
        "field_value_moves": value_moves,
        "field_timestamp_moves_with_value": both,
        "field_timestamp_is_update_time": ts_moves > 0 and ts_moves == both == value_moves,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=300)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of sampler-only CPU measurement")
    ap.add_argument("--calls", type=int, default=200, help="calls per candidate in the side-by-side")
    ap.add_argument("--only-candidates", action="store_true",
                    help="measure the candidate calls (and the field-vs-counter check) only")
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

    calls = {"counter": 0, "power": 0, "util": 0}

    def counted(name, key):
        fn = getattr(pynvml, name)

        def wrapper(*a, **kw):
            calls[key] += 1
            return fn(*a, **kw)

        setattr(pynvml, name, wrapper)

    handle = sensors[0]._handle
    out["candidates"] = candidate_calls(pynvml, handle, args.calls)
    out["schedules"] = schedule_estimate(out["candidates"])
    out["field_vs_counter"] = field_vs_counter(pynvml, handle)
    if args.only_candidates:
        for s in sensors:
            s.close()
        return _report(out, args.json)
    counted("nvmlDeviceGetTotalEnergyConsumption", "counter")
    counted("nvmlDeviceGetPowerUsage", "power")
    if hasattr(pynvml, "nvmlDeviceGetUtilizationRates"):
        counted("nvmlDeviceGetUtilizationRates", "util")
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
    # no window open: the idle schedule (counter every nvml_idle_interval_s)
    c_bg, t_bg = dict(calls), time.monotonic()
    p_bg, s_bg = time.process_time(), meter.sampler.cpu_time_s()
    time.sleep(10.0)
    dt = time.monotonic() - t_bg
    out["idle_schedule_counter_reads_per_s_per_gpu"] = (calls["counter"] - c_bg["counter"]) / dt / n_gpus
    out["idle_schedule_power_reads_per_s_per_gpu"] = (calls["power"] - c_bg["power"]) / dt / n_gpus
    out["idle_schedule_util_reads_per_s_per_gpu"] = (calls["util"] - c_bg["util"]) / dt / n_gpus
    out["idle_schedule_process_cpu_pct_of_one_core"] = (time.process_time() - p_bg) / dt * 100
    out["idle_schedule_sampler_threads_cpu_pct_of_one_core"] = (meter.sampler.cpu_time_s() - s_bg) / dt * 100
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
                                     - 10.0 * n_gpus * edges_s) / (2 * args.windows)  # at 10 Hz between edges
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
    out["window_counter_reads_per_s_per_gpu"] = (calls["counter"] - k0["counter"]) / (t1 - t0) / n_gpus
    out["window_power_reads_per_s_per_gpu"] = (calls["power"] - k0["power"]) / (t1 - t0) / n_gpus
    out["idle_window_hung_gaps"] = sum(1 for p in m.provenance.values() for g in p.gaps if g.reason.startswith("hung"))
    out["idle_window_coverage"] = min(p.coverage for p in m.provenance.values())
    out["idle_window_j"] = m.energy_j
    out["idle_window_power_w"] = m.power_mean_w
    out["idle_window_low_util_j"] = m.energy_low_util_j
    meter.close()
    return _report(out, args.json)


def _report(out: dict, path: str | None) -> int:
    print(json.dumps(out, indent=1))
    est = out.get("schedules", {})
    if est:
        old = est["old schedule (every tick always), % of a core per GPU"]
        idle = est["idle schedule, no window open, % of a core per GPU"]
        busy = est["idle schedule, window open, % of a core per GPU"]
        print(f"NVML calls, % of one core per GPU (estimate: calls/s x mean CPU per call): old schedule {old}; "
              f"idle schedule {idle} with no window open, {busy} while one is open; "
              f"with the two-field call: {est['idle schedule + fields, no window open']} / "
              f"{est['idle schedule + fields, window open']}")
    if path:
        Path(path).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
