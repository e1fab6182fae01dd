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
  floor-10hz        a bare thread that wakes 10 times a second (``time.sleep``, as our sampler does)
                    and does nothing: this machine's cost of a wake-up, the floor under any 10 Hz sampler
  floor-10hz-lock   the same thread waiting on a lock with a timeout instead (how the sampler
                    slept before; kept to show the difference)
  ours-cpu-model    Meter at 10 Hz with the cpu-model estimate, one window open throughout
  ours-replay       Meter at 10 Hz with a replay sensor (two domains), one window open throughout
  ours-both         Meter at 10 Hz with cpu-model + replay
  mlflow-1s         mlflow.system_metrics SystemMetricsMonitor, sampling_interval=1, sqlite store
  mlflow-10s        the same at its default 10 s
  codecarbon-15s    codecarbon OfflineEmissionsTracker (country_iso_code, save_to_file=False), default 15 s

With ``--rounds N`` every configuration runs N times, interleaved round by round (the machine's
load drifts; interleaving spreads it over all configurations), each round's baseline is subtracted
from that round's runs, and the table shows medians with the min-max range across rounds.

``--compare DIR`` also runs every ``ours-*`` configuration from the ``ipython_energy`` of another
checkout (an earlier commit in a ``git worktree``), as ``ours-*@compared``, in the same interleaved
rounds: two versions of the sampler measured side by side, under the same machine state.

Run:  python bench/sampler_overhead.py [--seconds 30] [--rounds 3] [--markdown] [--only ours-cpu-model,mlflow-1s]
                                       [--compare DIR]
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
CONFIGS = ["baseline", "floor-10hz", "floor-10hz-lock", "ours-cpu-model", "ours-replay", "ours-both", "mlflow-1s", "mlflow-10s", "codecarbon-15s"]


def _child(config: str, seconds: float, root: Path = ROOT) -> dict:
    sys.path.insert(0, str(root))
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
        thread_cpu = meter.sampler.cpu_time_s

        def stop():
            # (the threads publish their CPU time every 8 ticks: close enough over 30 s)
            extra["sampler_thread_cpu_s"] = thread_cpu() - extra.pop("thread_cpu_at_start_s")
            extra["ticks"] = meter.sampler.ticks
            window.end()
            meter.stop()
    elif config == "floor-10hz":
        import threading

        halt = []

        def idle_loop():
            while not halt:
                time.sleep(0.1)

        th = threading.Thread(target=idle_loop, daemon=True)
        th.start()

        def stop():
            halt.append(True)
            th.join()
    elif config == "floor-10hz-lock":
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
    if config.startswith("ours"):
        extra["thread_cpu_at_start_s"] = thread_cpu()
    c0, t0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = time.process_time(), time.monotonic()
    if stop is not None:
        stop()
    return {"config": config, "cpu_s": c1 - c0, "wall_s": t1 - t0, **extra}


def _commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "ipython_energy"],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + (" + uncommitted changes" if dirty else "") if out.returncode == 0 else "not git"
    except OSError:
        return "unknown"


def _median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="measured stretch per configuration (default 30)")
    ap.add_argument("--rounds", type=int, default=1, help="runs per configuration, interleaved (default 1)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument("--compare", metavar="DIR", type=Path, default=None,
                    help="also run the ours-* configurations from this checkout, side by side")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.seconds, args.root)))
        return 0
    configs = [c for c in CONFIGS if not args.only or c in args.only.split(",") or c == "baseline"]
    if args.compare is not None:
        if not (args.compare / "ipython_energy" / "sampler.py").is_file():
            raise SystemExit(f"--compare: no ipython_energy/sampler.py under {args.compare}")
        configs += [f"{c}@compared" for c in configs if c.startswith("ours")]
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for _ in range(max(1, args.rounds)):
        base_pct = None
        for c in configs:
            name, _, compared = c.partition("@")
            root = args.compare if compared else ROOT
            proc = subprocess.run(
                [sys.executable, __file__, "--child", name, "--seconds", str(args.seconds), "--root", str(root)],
                capture_output=True, text=True, timeout=args.seconds + 180,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                print(f"# {c}: failed (rc={proc.returncode}): {proc.stderr.strip()[-400:]}", file=sys.stderr)
                continue
            r = json.loads(lines[-1])
            r["pct"] = r["cpu_s"] / r["wall_s"] * 100
            if c == "baseline":
                base_pct = r["pct"]
            r["net"] = max(0.0, r["pct"] - (base_pct or 0.0))
            runs[c].append(r)
    ours = _median([r["net"] for r in runs.get("ours-cpu-model", [])]) if runs.get("ours-cpu-model") else None
    rows = []
    for c, rs in runs.items():
        if not rs:
            continue
        pct = _median([r["pct"] for r in rs])
        net = _median([r["net"] for r in rs])
        spread = f" [{min(r['net'] for r in rs):.3f}–{max(r['net'] for r in rs):.3f}]" if len(rs) > 1 else ""
        threads = [r["sampler_thread_cpu_s"] / r["wall_s"] * 100 for r in rs if "sampler_thread_cpu_s" in r]
        ratio = ""
        if ours and c not in ("baseline", "ours-cpu-model"):
            ratio = f"{net / max(ours, 1e-6):.1f}x"
        rows.append([
            c, f"{_median([r['cpu_s'] for r in rs]) * 1000:.0f} ms", f"{pct:.3f}%",
            "" if c == "baseline" else f"{net:.3f}%{spread}",
            f"{_median(threads):.3f}%" if threads else "", ratio,
        ])
    head = ["configuration", "process CPU", "% of one core", "minus baseline", "sampler threads", "vs ours-cpu-model"]
    when = _dt.date.today().isoformat()
    rounds = f", median of {args.rounds} interleaved rounds [min–max]" if args.rounds > 1 else ""
    print(f"# sampler overhead: {args.seconds:g} s per configuration, each in its own process{rounds}; {when}, "
          f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    if args.compare is not None:
        print(f"# @compared: the ipython_energy of {args.compare} ({_commit(args.compare)}); "
              f"the others: {ROOT} ({_commit(ROOT)})\n")
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
