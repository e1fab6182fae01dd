"""Accuracy of Meter windows against synthetic traces with a known energy.

Every number here goes through the real sampler thread and real ``Meter`` windows, in real
time: the only stand-in is the replay sensor, which plays each trace against the monotonic
clock and knows the exact integral (the truth).  Each trace is seen through four emulated
sensor types at once:

* ``counter``: a fresh cumulative counter (like RAPL, ~1 ms updates);
* ``counter-100ms``: a counter that only updates every 100 ms at an unknown phase
  (like NVML's ``nvmlDeviceGetTotalEnergyConsumption``);
* ``power-1s-avg``: power only, a trailing 1 s mean (like ``nvmlDeviceGetPowerUsage`` on
  Ampere and newer);
* ``power-instant``: power only, instantaneous (like older GPUs), sampled at 10 Hz.

Windows of 10 ms to 10 s (each 0-10 % longer than its nominal length, at random) are
opened at random times, overlapping freely.  Beside our
error, the table shows what polling the *instantaneous* power every 10 s or 15 s would
report for the same windows (MLflow's and W&B's system metrics, CodeCarbon's interval):
the mean of the polled samples that fall inside the window times its duration, 0 J when
none does.  The poll phase is random per window.

Run:  python bench/accuracy.py [--seconds 50] [--markdown] [--seed 1]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipython_energy.meter import Meter  # noqa: E402
from ipython_energy.sensors.replay import ReplaySensor, ReplayTrace  # noqa: E402

MODES = {
    "counter": dict(),
    "counter-100ms": dict(update_period_s=0.1, report_power=False),
    "power-1s-avg": dict(averaging_s=1.0, report_energy=False),
    "power-instant": dict(report_energy=False),
}
LENGTHS_S = [0.01, 0.03, 0.1, 1.0, 3.0, 10.0]
COUNTS = {0.01: 40, 0.03: 40, 0.1: 40, 1.0: 20, 3.0: 10, 10.0: 6}
POLLS_S = [10.0, 15.0]


def square(hz: float, seconds: float, lo=100.0, hi=300.0) -> ReplayTrace:
    t, w = [], []
    for k in range(int(math.ceil(seconds * hz))):
        t += [k / hz, (k + 0.5) / hz, (k + 0.5) / hz, (k + 1) / hz]
        w += [lo, lo, hi, hi]
    return ReplayTrace(t, {"x_w": w})


def triangle(period_s: float, seconds: float, lo=100.0, hi=300.0) -> ReplayTrace:
    t, w = [], []
    for k in range(int(math.ceil(seconds / period_s)) + 1):
        t += [k * period_s, (k + 0.5) * period_s]
        w += [lo, hi]
    return ReplayTrace(t, {"x_w": w})


def traces(seconds: float) -> dict[str, ReplayTrace]:
    s = seconds + 30
    return {
        "steady 200 W": ReplayTrace([0, s], {"x_w": [200, 200]}),
        "square 5 Hz": square(5, s),
        "square 20 Hz": square(20, s),
        "square 50 Hz": square(50, s),
        "ramps 8 s": triangle(8.0, s),
    }


def polled_estimate(trace: ReplayTrace, a: float, b: float, every_s: float, rng: random.Random) -> float:
    """What an every-``every_s`` instantaneous power poll reports for the window [a, b] (trace time)."""
    phase = rng.uniform(0, every_s)
    k0 = math.ceil((a - phase) / every_s)
    samples = []
    t = phase + k0 * every_s
    while t <= b:
        samples.append(trace.power_at_w("x", t))
        t += every_s
    if not samples:
        return 0.0
    return statistics.fmean(samples) * (b - a)


def schedule(seconds: float, rng: random.Random, warmup_s: float) -> list[tuple[float, float]]:
    out = []
    for length, n in COUNTS.items():
        for _ in range(n):
            # lengths jittered by up to 10 %: a window that is a whole number of counter
            # updates long would hide a counter's staleness (it cancels between the edges)
            actual = length * (1.0 + rng.uniform(0.0, 0.1))
            start = rng.uniform(warmup_s, max(warmup_s + 0.1, seconds - actual))
            out.append((start, length, actual))
    return out


def run(seconds: float, seed: int, warmup_s: float = 3.0) -> dict:
    rng = random.Random(seed)
    trs = traces(seconds)
    sensors: dict[tuple[str, str], ReplaySensor] = {}
    for tname, tr in trs.items():
        for mode, kw in MODES.items():
            kw = dict(kw)
            if "update_period_s" in kw:
                kw["phase_s"] = rng.uniform(0, kw["update_period_s"])
            dom = f"{tname}|{mode}"
            sensors[(tname, mode)] = ReplaySensor(tr, names={"x": dom}, kinds={dom: "gpu"}, **kw)
    meter = Meter(list(sensors.values()), interval_s=0.1, idle_power_w=0.0)
    plan = schedule(seconds, rng, warmup_s)
    events = sorted([(s, 0, i) for i, (s, _, _) in enumerate(plan)] + [(s + a, 1, i) for i, (s, _, a) in enumerate(plan)])
    meter.start()
    t0 = meter.sampler.started_at
    open_w = {}
    results = []  # (length, window, measurement)
    for at, kind, i in events:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if kind == 0:
            open_w[i] = meter.begin(f"w{i}")
        else:
            w = open_w.pop(i)
            results.append((plan[i][1], w, w.end()))
    cpu_s = meter.sampler.cpu_time_s()
    wall_s = time.monotonic() - t0
    meter.stop()
    rows = {}
    for (tname, mode), sensor in sensors.items():
        dom = f"{tname}|{mode}"
        for length, w, m in results:
            true = sensor.true_energy_j(dom, w.begin_s, w.end_s)
            got = m.domains[dom]
            r = rows.setdefault((tname, length, mode), {"err": [], "zero": 0, "short": 0})
            r["err"].append(abs(got - true) / true)
            r["zero"] += got == 0.0
            r["short"] += m.provenance[dom].short_window
    prng = random.Random(seed + 1)
    for tname, tr in trs.items():
        sensor = sensors[(tname, "counter")]
        for length, w, m in results:
            a, b = sensor.trace_time(w.begin_s), sensor.trace_time(w.end_s)
            true = tr.energy_between_j("x", a, b)
            for every in POLLS_S:
                got = polled_estimate(tr, a, b, every, prng)
                r = rows.setdefault((tname, length, f"poll {every:g} s"), {"err": [], "zero": 0, "short": 0})
                r["err"].append(abs(got - true) / true)
                r["zero"] += got == 0.0
    return {"rows": rows, "trs": list(trs), "wall_s": wall_s, "sampler_cpu_s": cpu_s,
            "n_windows": len(results), "n_domains": len(sensors)}


def fmt(r: dict) -> str:
    e = r["err"]
    s = f"{statistics.fmean(e) * 100:.2f} / {max(e) * 100:.2f}"
    if r["zero"]:
        s += f" ({r['zero']}×0 J)"
    return s


def table(res: dict, markdown: bool) -> str:
    cols = list(MODES) + [f"poll {p:g} s" for p in POLLS_S]
    head = ["trace", "window"] + cols
    lines = []
    body = []
    for tname in res["trs"]:
        for length in LENGTHS_S:
            row = [tname, f"{length * 1000:.0f} ms" if length < 1 else f"{length:g} s"]
            for c in cols:
                r = res["rows"].get((tname, length, c))
                row.append(fmt(r) if r else "")
            body.append(row)
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * len(cols)) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in body]
    else:
        widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def verdicts(res: dict) -> list[str]:
    out = []
    rows = res["rows"]
    for mode in MODES:
        long = [e for (t, L, m), r in rows.items() if m == mode and L >= 1.0 for e in r["err"]]
        short = [e for (t, L, m), r in rows.items() if m == mode and L < 1.0 for e in r["err"]]
        zeros = sum(r["zero"] for (t, L, m), r in rows.items() if m == mode)
        long_ok = [e for (t, L, m), r in rows.items()
                   if m == mode and L >= 1.0 and t not in ("square 5 Hz",) for e in r["err"]]
        out.append(
            f"{mode}: windows >= 1 s max {max(long) * 100:.2f}% (mean {statistics.fmean(long) * 100:.3f}%), "
            f"without the 5 Hz square max {max(long_ok) * 100:.2f}%; "
            f"10-100 ms max {max(short) * 100:.1f}% (mean {statistics.fmean(short) * 100:.2f}%); zero-J windows: {zeros}"
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=50.0, help="length of the real-time run (default 50)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown for docs")
    args = ap.parse_args(argv)
    if args.seconds < 15:
        ap.error("--seconds must be at least 15 (10 s windows after a 3 s warm-up)")
    res = run(args.seconds, args.seed)
    when = _dt.date.today().isoformat()
    print(f"# accuracy: {res['n_windows']} windows x {res['n_domains']} emulated domains, "
          f"{res['wall_s']:.0f} s real time, sampler at 10 Hz; {when}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("# cells: mean / max absolute error in %, vs the exact integral of the trace\n")
    print(table(res, args.markdown))
    print()
    for v in verdicts(res):
        print(("- " if args.markdown else "") + v)
    print(f"{'- ' if args.markdown else ''}sampler + readers CPU over the run: {res['sampler_cpu_s']:.2f} s "
          f"({res['sampler_cpu_s'] / res['wall_s'] * 100:.2f}% of one core for {res['n_domains']} sensors)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
