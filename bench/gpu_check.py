"""GPU check: NVML counter vs integrated polled power vs nvidia-smi, over the same windows.

Meant to run once on a machine with an NVIDIA GPU and PyTorch, as one short script
(about 90 s).  It:

1. measures how often ``nvmlDeviceGetTotalEnergyConsumption`` really updates on this GPU
   (polling it as fast as possible for 2 s);
2. runs a torch workload of matrix products with idle gaps (busy 3 s / idle 2 s, plus
   short 50 ms bursts) while three things watch the same GPU:
   * ipython-energy's ``Meter`` (real sampler at 10 Hz, NVML counter, staleness corrected),
   * integrated polled power: ``nvmlDeviceGetPowerUsage`` sampled every 100 ms on a
     separate thread and integrated with trapezoids,
   * ``nvidia-smi --query-gpu=power.draw`` polled every 100 ms in a subprocess loop,
     integrated the same way;
3. prints a table per window (counter joules from raw NVML reads at the edges, Meter joules,
   the two integrations) and writes JSON to ``$OUT/gpu_check.json`` when ``$OUT`` is set.

Skips cleanly (exit 0, with a message) when torch, CUDA or NVML is not available.

Run:  python bench/gpu_check.py [--seconds 90] [--gpu 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def skip(msg: str) -> int:
    print(f"gpu_check: skipped: {msg}")
    return 0


class PowerIntegrator:
    """Polls a power source every ``interval_s`` on a thread and integrates it (trapezoids)."""

    def __init__(self, read_w, interval_s: float = 0.1):
        self.read_w = read_w
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self._t.start()

    def stop(self):
        self._stop.set()
        self._t.join(5)

    def _loop(self):
        while not self._stop.is_set():
            try:
                w = self.read_w()
            except Exception as exc:  # recorded, the check goes on with the other sources
                print(f"gpu_check: power read failed: {exc!r}", file=sys.stderr)
                w = None
            if w is not None:
                self.samples.append((time.monotonic(), w))
            self._stop.wait(self.interval_s)

    def energy_j(self, a: float, b: float) -> float | None:
        pts = [(t, w) for t, w in self.samples if a <= t <= b]
        before = [(t, w) for t, w in self.samples if t < a][-1:]
        after = [(t, w) for t, w in self.samples if t > b][:1]
        pts = before + pts + after
        if len(pts) < 2:
            return None

        def at(x):
            for (t0, w0), (t1, w1) in zip(pts, pts[1:]):
                if t0 <= x <= t1:
                    return w0 + (w1 - w0) * (x - t0) / (t1 - t0) if t1 > t0 else w0
            return pts[0][1] if x < pts[0][0] else pts[-1][1]

        xs = [a] + [t for t, _ in pts if a < t < b] + [b]
        return sum(0.5 * (at(x0) + at(x1)) * (x1 - x0) for x0, x1 in zip(xs, xs[1:]))


def nvidia_smi_reader(index: int):
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None

    def read():
        out = subprocess.run(
            [exe, f"--id={index}", "--query-gpu=power.draw", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5,
        )
        return float(out.stdout.strip().splitlines()[0])

    return read


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--gpu", type=int, default=0, help="CUDA device index (cuda:N)")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        return skip("PyTorch is not installed")
    if not torch.cuda.is_available():
        return skip("no CUDA GPU visible to PyTorch")
    try:
        import pynvml as nv

        nv.nvmlInit()
    except Exception as exc:  # any NVML problem means there is nothing to check here
        return skip(f"NVML unavailable: {exc!r}")

    from ipython_energy.meter import Meter
    from ipython_energy.sensors.nvml import discover_nvml

    sensors, notes = discover_nvml()
    sensors = [s for s in sensors if s.domains()[0].name == f"gpu{args.gpu}"]
    if not sensors:
        return skip(f"NVML sees no gpu{args.gpu}: {notes}")
    info = sensors[0].domains()[0]
    handle = sensors[0]._handle
    counter = info.method == "counter"
    print(f"gpu_check: {info.details.get('model')} driver {info.details.get('driver')}, method {info.method}")

    # 0. what one NVML call costs on this machine: wall time and this thread's CPU time
    call_cost = {}
    calls = {
        "energy_counter": lambda: nv.nvmlDeviceGetTotalEnergyConsumption(handle),
        "power": lambda: nv.nvmlDeviceGetPowerUsage(handle),
        "temperature": lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU),
    }
    for name, call in calls.items():
        if name == "energy_counter" and not counter:
            continue
        wall, cpu = [], []
        for _ in range(200):
            w0, c0 = time.perf_counter(), time.thread_time()
            call()
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - w0)
        wall.sort()
        cpu.sort()
        call_cost[name] = {"wall_p50_us": wall[100] * 1e6, "wall_p95_us": wall[190] * 1e6,
                           "cpu_p50_us": cpu[100] * 1e6, "cpu_p95_us": cpu[190] * 1e6}
        print(f"gpu_check: nvml {name}: wall p50 {wall[100] * 1e6:.0f} us (p95 {wall[190] * 1e6:.0f}), "
              f"thread CPU p50 {cpu[100] * 1e6:.0f} us (p95 {cpu[190] * 1e6:.0f})")

    # 1. how often does the counter really change?
    update_period_s = None
    if counter:
        changes, last, t_end = [], nv.nvmlDeviceGetTotalEnergyConsumption(handle), time.monotonic() + 2.0
        while time.monotonic() < t_end:
            v = nv.nvmlDeviceGetTotalEnergyConsumption(handle)
            if v != last:
                changes.append(time.monotonic())
                last = v
        if len(changes) >= 3:
            gaps = sorted(b - a for a, b in zip(changes, changes[1:]))
            update_period_s = gaps[len(gaps) // 2]
        print(f"gpu_check: counter updates every {update_period_s} s (median over 2 s of polling)")

    dev = torch.device(f"cuda:{args.gpu}")
    a = torch.randn(8192, 8192, device=dev)
    b = torch.randn(8192, 8192, device=dev)
    torch.cuda.synchronize(dev)

    def busy(seconds: float):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            (a @ b).sum()
            torch.cuda.synchronize(dev)

    polled = PowerIntegrator(lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000.0, 0.1)
    smi_read = nvidia_smi_reader(int(info.details.get("nvml_index", args.gpu)))
    smi = PowerIntegrator(smi_read, 0.1) if smi_read else None
    meter = Meter(sensors, interval_s=0.1)
    meter.start()
    polled.start()
    if smi:
        smi.start()
    time.sleep(3.0)  # counter phase, idle baseline

    def raw_counter_j():
        return nv.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0 if counter else None

    windows = []
    t_stop = time.monotonic() + args.seconds
    k = 0
    while time.monotonic() < t_stop - 6:
        k += 1
        for label, work, length in [(f"busy {k}", True, 3.0), (f"idle {k}", False, 2.0)]:
            c0 = raw_counter_j()
            w = meter.begin(label)
            busy(length) if work else time.sleep(length)
            m = w.end()
            c1 = raw_counter_j()
            windows.append({"label": label, "begin_s": w.begin_s, "end_s": w.end_s, "meter": m,
                            "raw_counter_j": None if c0 is None else c1 - c0})
        # short bursts: 50 ms windows
        for j in range(3):
            w = meter.begin(f"burst {k}.{j}")
            busy(0.05)
            m = w.end()
            windows.append({"label": w.label, "begin_s": w.begin_s, "end_s": w.end_s, "meter": m,
                            "raw_counter_j": None})
            time.sleep(0.3)
    time.sleep(1.0)  # let the polled integrators see past the last window
    meter.stop()
    polled.stop()
    if smi:
        smi.stop()

    rows = []
    for wd in windows:
        m = wd["meter"]
        dom = info.name
        row = {
            "label": wd["label"],
            "duration_s": m.duration_s,
            "meter_j": m.domains[dom],
            "short_window": m.provenance[dom].short_window,
            "raw_counter_edges_j": wd["raw_counter_j"],
            "nvml_power_integrated_j": polled.energy_j(wd["begin_s"], wd["end_s"]),
            "nvidia_smi_integrated_j": smi.energy_j(wd["begin_s"], wd["end_s"]) if smi else None,
            "temperature_c": m.state.get(dom, {}).get("temperature_c"),
        }
        rows.append(row)

    def f(x):
        return "" if x is None else f"{x:9.1f}"

    print(f"\n{'window':<12}{'s':>6}{'meter J':>10}{'raw ctr J':>10}{'NVML pwr J':>11}{'smi J':>10}  flags")
    for r in rows:
        print(f"{r['label']:<12}{r['duration_s']:6.2f}{f(r['meter_j']):>10}{f(r['raw_counter_edges_j']):>10}"
              f"{f(r['nvml_power_integrated_j']):>11}{f(r['nvidia_smi_integrated_j']):>10}  "
              f"{'short' if r['short_window'] else ''}")
    long_rows = [r for r in rows if r["duration_s"] >= 1.0]
    for key in ("raw_counter_edges_j", "nvml_power_integrated_j", "nvidia_smi_integrated_j"):
        pairs = [(r["meter_j"], r[key]) for r in long_rows if r[key]]
        if pairs:
            tot_m, tot_o = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
            print(f"total over windows >= 1 s: meter {tot_m:.0f} J vs {key} {tot_o:.0f} J ({(tot_m / tot_o - 1) * 100:+.2f}%)")
    result = {
        "gpu": dict(info.details), "method": info.method, "counter_update_period_s": update_period_s,
        "idle_power_w": meter.idle_power_w, "nvml_call_cost": call_cost, "windows": rows,
    }
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
        print(f"gpu_check: wrote {Path(out, 'gpu_check.json')}")
    for s in sensors:
        s.close()
    nv.nvmlShutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
