"""CPU cost of background sampling: ipython-energy's sampler at 10 Hz beside MLflow's and CodeCarbon's.

Each configuration runs alone in a fresh Python process whose main thread only sleeps;
the process CPU time consumed over the measured stretch (``time.process_time``, all
threads, after start-up and imports) is the monitor's cost.  An idle process with the
same imports is the baseline and is subtracted.  CodeCarbon starts a new
``threading.Timer`` thread per measurement, so per-thread accounting cannot follow it;
process CPU can.  For ipython-energy the sampler's own per-thread count
(``time.thread_time`` in the sampler and reader threads) is shown as a cross-check.

Configurations:
  baseline          idle process
  floor-10hz        a bare thread that wakes 10 times a second and does nothing (this machine's
                    cost of a wake-up: the floor under any 10 Hz sampler)
  ours-cpu-model    Meter at 10 Hz with the cpu-model estimate, one window open throughout
  ours-replay       Meter at 10 Hz with a replay sensor (two domains), one window open throughout
  ours-both         Meter at 10 Hz with cpu-model + replay
  mlflow-1s         mlflow.system_metrics SystemMetricsMonitor, sampling_interval=1, sqlite store
  mlflow-10s        the same at its default 10 s
  codecarbon-15s    codecarbon OfflineEmissionsTracker (country_iso_code, save_to_file=False), default 15 s

Run:  python bench/sampler_overhead.py [--seconds 30] [--markdown] [--only ours-cpu-model,mlflow-1s]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["baseline", "floor-10hz", "ours-cpu-model", "ours-replay", "ours-both", "mlflow-1s", "mlflow-10s", "codecarbon-15s"]


def _child(config: str, seconds: float) -> dict:
    sys.path.insert(0, str(ROOT))
    tmp = tempfile.mkdtemp(prefix="overhead-")
    stop = None
    extra: dict = {}
    if config.startswith("ours"):
        from ipython_energy.meter import Meter
        from ipython_energy.sensors.cpu_model import CpuModelSensor
        from ipython_energy.sensors.replay import ReplaySensor, ReplayTrace

        sensors = []
        if config in ("ours-cpu-model", "ours-both"):
            sensors.append(CpuModelSensor())
        if config in ("ours-replay", "ours-both"):
            sensors.append(ReplaySensor(ReplayTrace([0, 1e6], {"gpu0_w": [200, 200], "dram0_w": [10, 10]})))
        meter = Meter(sensors, interval_s=0.1)
        meter.start()
        window = meter.begin("bench")

        def stop():
            extra["sampler_thread_cpu_s"] = meter.sampler.cpu_time_s()
            extra["ticks"] = meter.sampler.ticks
            window.end()
            meter.stop()
    elif config == "floor-10hz":
        import threading

        gate = threading.Lock()
        gate.acquire()

        def idle_loop():
            while not gate.acquire(timeout=0.1):
                pass

        th = threading.Thread(target=idle_loop, daemon=True)
        th.start()

        def stop():
            gate.release()
            th.join()
    elif config.startswith("mlflow"):
        import mlflow
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        from mlflow.tracking import MlflowClient

        uri = f"sqlite:///{tmp}/mlflow.db"
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        exp = client.create_experiment("overhead")
        run = client.create_run(exp)
        interval = 1.0 if config == "mlflow-1s" else 10.0
        mon = SystemMetricsMonitor(run.info.run_id, sampling_interval=interval, tracking_uri=uri)
        mon.start()

        def stop():
            mon.finish()
            client.set_terminated(run.info.run_id)
    elif config.startswith("codecarbon"):
        import logging

        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        tracker = OfflineEmissionsTracker(
            country_iso_code="FRA", save_to_file=False, output_dir=tmp, log_level="error",
            measure_power_secs=15, allow_multiple_runs=True,
        )
        tracker.start()

        def stop():
            extra["emissions_kg"] = tracker.stop()
    elif config != "baseline":
        raise SystemExit(f"unknown config {config!r}")
    time.sleep(1.0)  # let start-up work finish before measuring
    c0, t0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = time.process_time(), time.monotonic()
    if stop is not None:
        stop()
    return {"config": config, "cpu_s": c1 - c0, "wall_s": t1 - t0, **extra}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="measured stretch per configuration (default 30)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.seconds)))
        return 0
    configs = [c for c in CONFIGS if not args.only or c in args.only.split(",") or c == "baseline"]
    results = {}
    for c in configs:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", c, "--seconds", str(args.seconds)],
            capture_output=True, text=True, timeout=args.seconds + 180,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            print(f"# {c}: failed (rc={proc.returncode}): {proc.stderr.strip()[-400:]}", file=sys.stderr)
            continue
        results[c] = json.loads(lines[-1])
    base = results.get("baseline", {"cpu_s": 0.0, "wall_s": 1.0})
    base_pct = base["cpu_s"] / base["wall_s"] * 100
    ours = results.get("ours-cpu-model")
    rows = []
    for c, r in results.items():
        pct = r["cpu_s"] / r["wall_s"] * 100
        net = max(0.0, pct - base_pct) if c != "baseline" else pct
        thread = r.get("sampler_thread_cpu_s")
        ratio = ""
        if ours and c not in ("baseline",) and c != "ours-cpu-model":
            ours_net = max(1e-6, ours["cpu_s"] / ours["wall_s"] * 100 - base_pct)
            ratio = f"{net / ours_net:.1f}x"
        rows.append([
            c, f"{r['cpu_s'] * 1000:.0f} ms", f"{pct:.3f}%", f"{net:.3f}%" if c != "baseline" else "",
            "" if thread is None else f"{thread / r['wall_s'] * 100:.3f}%", ratio,
        ])
    head = ["configuration", "process CPU", "% of one core", "minus baseline", "sampler threads", "vs ours-cpu-model"]
    when = _dt.date.today().isoformat()
    print(f"# sampler overhead: {args.seconds:g} s per configuration, each in its own process; {when}, "
          f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|---|" + "---:|" * (len(head) - 1))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for r in rows:
            print("  ".join(x.ljust(w) for x, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
