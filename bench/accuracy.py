"""Accuracy of Meter windows against synthetic traces with a known energy.

Every number here goes through the real sampler thread and real ``Meter`` windows, in real
time: the only stand-in is the replay sensor, which plays each trace against the monotonic
clock and knows the exact integral (the truth).  Each trace is seen through four emulated
sensor types at once:

* ``counter``: a fresh cumulative counter (like RAPL, ~1 ms updates);
* ``counter-100ms``: a counter that only updates every 100 ms at an unknown phase
  (like NVML's ``nvmlDeviceGetTotalEnergyConsumption``), read at every tick;
* ``counter-100ms-thread``: the same counter, with a 1 s-average power reading beside it (as an
  NVML GPU on Ampere and newer gives), read on a reader thread of its own at every tick (as an
  NVML GPU was read before the idle schedule): the control for the next column;
* ``counter-100ms-idle``: the same counter read the way an NVML GPU's is now (``slow_when_idle``):
  on a reader thread of its own, at every tick only while a window is open (and a short tail
  after), every ``--idle-interval`` seconds (default 2) otherwise;
* ``power-1s-avg``: power only, a trailing 1 s mean (like ``nvmlDeviceGetPowerUsage`` on
  Ampere and newer);
* ``power-instant``: power only, instantaneous (like older GPUs), sampled at 10 Hz.

Windows of 10 ms to 10 s (each 0-10 % longer than its nominal length, at random) are
opened at random times, overlapping freely; with ``--apart`` fewer of them open one at a time,
each after 1-5 s with no window open (every begin edge then follows reads at the idle interval:
the case that tests the idle schedule).  Beside our
error, the table shows what polling the *instantaneous* power every 10 s or 15 s would
report for the same windows (MLflow's and W&B's system metrics, CodeCarbon's interval):
the mean of the polled samples that fall inside the window times its duration, 0 J when
none does.  The poll phase is random per window.

Run:  python bench/accuracy.py [--seconds 50] [--markdown] [--seed 1] [--idle-interval 2]
      python bench/accuracy.py --apart [--markdown]      # ~2.5 min, --seconds does not apply
      python bench/accuracy.py --apart --traces "ramps,5 Hz"   # fewer traces: fewer threads on a small machine
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


class ThreadedReplay(ReplaySensor):
    """A replay counter read as a hardware sensor is: on a reader thread (``nonblocking`` False:
    the sampler calls ``read_values``), at every tick."""

    nonblocking = False


class IdleScheduledReplay(ThreadedReplay):
    """A replay counter read as an NVML counter GPU is: on a reader thread, and ``slow_when_idle``."""

    slow_when_idle = True


MODES = {
    "counter": dict(),
    "counter-100ms": dict(update_period_s=0.1, report_power=False),
    "counter-100ms-thread": dict(update_period_s=0.1, averaging_s=1.0),
    "counter-100ms-idle": dict(update_period_s=0.1, averaging_s=1.0),
    "power-1s-avg": dict(averaging_s=1.0, report_energy=False),
    "power-instant": dict(report_energy=False),
}
COUNTS = {0.01: 40, 0.03: 40, 0.1: 40, 1.0: 20, 3.0: 10, 10.0: 6}
#: With ``--apart``: windows one at a time, each after this many seconds (uniform) with none open.
APART_COUNTS = {0.01: 8, 0.03: 8, 0.1: 8, 1.0: 6, 3.0: 4, 10.0: 2}
APART_GAP_S = (1.0, 5.0)
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


def schedule_apart(rng: random.Random, warmup_s: float) -> list[tuple[float, float, float]]:
    """Windows one at a time in random order, each after an idle gap of APART_GAP_S seconds."""
    lengths = [length for length, n in APART_COUNTS.items() for _ in range(n)]
    rng.shuffle(lengths)
    out, t = [], warmup_s
    for length in lengths:
        t += rng.uniform(*APART_GAP_S)
        actual = length * (1.0 + rng.uniform(0.0, 0.1))
        out.append((t, length, actual))
        t += actual
    return out


def run(seconds: float, seed: int, warmup_s: float = 3.0, *, apart: bool = False,
        idle_interval_s: float = 2.0, only: list[str] | None = None) -> dict:
    rng = random.Random(seed)
    if apart:
        plan = schedule_apart(rng, warmup_s)
        seconds = plan[-1][0] + plan[-1][2] + 1.0
    trs = traces(seconds)
    if only:
        trs = {name: tr for name, tr in trs.items() if any(o.lower() in name.lower() for o in only)}
    sensors: dict[tuple[str, str], ReplaySensor] = {}
    for tname, tr in trs.items():
        for mode, kw in MODES.items():
            kw = dict(kw)
            if "update_period_s" in kw:
                kw["phase_s"] = rng.uniform(0, kw["update_period_s"])
            dom = f"{tname}|{mode}"
            cls = {"idle": IdleScheduledReplay, "thread": ThreadedReplay}.get(mode.rsplit("-", 1)[-1], ReplaySensor)
            sensors[(tname, mode)] = cls(tr, names={"x": dom}, kinds={dom: "gpu"}, **kw)
    meter = Meter(list(sensors.values()), interval_s=0.1, idle_power_w=0.0, idle_interval_s=idle_interval_s)
    if not apart:
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
            "n_windows": len(results), "n_domains": len(sensors), "lengths": sorted({p[1] for p in plan})}


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
        for length in res["lengths"]:
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
            f"without the 5 Hz square max {max(long_ok, default=math.nan) * 100:.2f}%; "
            f"10-100 ms max {max(short) * 100:.1f}% (mean {statistics.fmean(short) * 100:.2f}%); zero-J windows: {zeros}"
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=50.0, help="length of the real-time run (default 50)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown for docs")
    ap.add_argument("--apart", action="store_true",
                    help="fewer windows, one at a time, each after 1-5 s with none open (~2.5 min)")
    ap.add_argument("--traces", default=None,
                    help="comma list: only the traces whose names contain one of these (e.g. 'ramps,5 Hz')")
    ap.add_argument("--idle-interval", type=float, default=2.0,
                    help="seconds between reads of counter-100ms-idle while no window is open (default 2)")
    args = ap.parse_args(argv)
    if args.seconds < 15:
        ap.error("--seconds must be at least 15 (10 s windows after a 3 s warm-up)")
    only = [o.strip() for o in args.traces.split(",")] if args.traces else None
    res = run(args.seconds, args.seed, apart=args.apart, idle_interval_s=args.idle_interval, only=only)
    when = _dt.date.today().isoformat()
    print(f"# accuracy: {res['n_windows']} windows{' one at a time' if args.apart else ''} x "
          f"{res['n_domains']} emulated domains, {res['wall_s']:.0f} s real time, sampler at 10 Hz "
          f"(counter-100ms-idle: every {args.idle_interval:g} s between windows); {when}, {platform.node()}, "
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
