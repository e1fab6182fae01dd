"""Added wall time per cell of ``%%energy`` (logging on, sqlite store), side by side with the peers.

    python bench/cell_overhead.py [--cells 400] [--markdown] [--compare DIR]

In one real IPython shell, interleaved in a shuffled order every round, it times
``shell.run_cell`` for the same tiny cell body (``x = 1``) run

- plain;
- under ``%%time``;
- under ``%%energy`` (summary line printed to a buffer, MLflow logging on, sqlite store);
- under autolog (``%energy autolog on``, the cell itself plain);
- wrapped in MLflow ``start_run``/``end_run`` on the same kind of sqlite store;
- wrapped in CodeCarbon's offline tracker ``start``/``stop``.

It reports p50 and p95 per variant and the added p50 over the plain cell, and the ratios.
It also times ``%load_ext ipython_energy`` in fresh interpreters (median of several).

``--compare DIR`` also loads the ``ipython_energy`` of another checkout (an earlier commit in a
``git worktree``, say) into the same shell, with its own tracker, sampler, writer and sqlite
store, as ``%%energy_compared``, and times it in the same shuffled rounds: the two versions then
see the same machine at the same moments, which separate runs on a loaded VM do not.  Two
trackers sample and write at once, so every variant is a little slower than in a run without it;
compare the two ``%%energy`` rows with each other, and a magic that only runs its body
(``%%body_only``, the part of the cost that any cell magic running its cell pays).

The energy sensors are what this machine has: without GPU or RAPL that is the CPU estimate
(``IPYTHON_ENERGY_SENSORS`` may select another, e.g. ``replay:trace.csv``).
Targets: ≤ 0.5 ms p50 added per cell; ``%load_ext`` ≤ 150 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_ext_times(repeats: int) -> list[float]:
    code = textwrap.dedent("""
        import time
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        t0 = time.perf_counter()
        ip.run_line_magic("load_ext", "ipython_energy")
        print("LOADMS", (time.perf_counter() - t0) * 1000)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        env.setdefault("IPYTHON_ENERGY_HOME", str(Path(tmp) / "home"))
        for _ in range(repeats):
            out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp, capture_output=True,
                                 text=True, timeout=120).stdout
            times.append(float(out.split("LOADMS")[1]))
    return times


def load_compared(shell, root: Path, tmp: Path):
    """Load ``root``'s ipython_energy as another package and register its %%energy as %%energy_compared."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ipython_energy_compared", root / "ipython_energy" / "__init__.py",
                                                  submodule_search_locations=[str(root / "ipython_energy")])
    package = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = package
    spec.loader.exec_module(package)
    magics_mod = importlib.import_module(f"{spec.name}.magics")
    magics = magics_mod.EnergyMagics(shell=shell)
    config = magics.build_config().with_values(tracking_uri=f"sqlite:///{tmp / 'compared.db'}")
    try:  # the process's tracker lives in runtime; a checkout from before 2026-11-30 kept it in tracking
        process = importlib.import_module(f"{spec.name}.runtime")
        process.set_tracker(process.new_tracker(config))
    except ModuleNotFoundError:
        process = importlib.import_module(f"{spec.name}.tracking")
        process.set_tracker(process.Tracker(config))
    process.get_tracker().start_background()
    shell.register_magic_function(magics.energy, "cell", "energy_compared")
    return package


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=400, help="cells per variant")
    ap.add_argument("--loads", type=int, default=7, help="fresh interpreters for the %%load_ext timing")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--no-codecarbon", action="store_true")
    ap.add_argument("--compare", metavar="DIR", type=Path,
                    help="another checkout whose %%%%energy is timed beside this one, as %%%%energy_compared")
    ap.add_argument("--no-peers", action="store_true", help="leave out the MLflow and CodeCarbon variants")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="cell-overhead-"))
    os.environ.setdefault("IPYTHON_ENERGY_HOME", str(tmp / "home"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'energy.db'}"
    os.chdir(tmp)
    sys.path.insert(0, str(ROOT))

    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        shell.run_line_magic("load_ext", "ipython_energy")
        shell.run_cell("import mlflow\nmlflow.set_tracking_uri('sqlite:///%s')\nmlflow.set_experiment('peer')"
                       % (tmp / "peer.db"))
        variants = {
            "plain cell": "x = 1",
            "%%time": "%%time\nx = 1",
            "%%energy": "%%energy\nx = 1",
        }
        if not args.no_peers:
            variants["MLflow start_run/end_run"] = "mlflow.start_run()\nx = 1\nmlflow.end_run()"
        if args.compare is not None:
            magics = shell.magics_manager.registry["EnergyMagics"]
            shell.register_magic_function(lambda line, cell: magics._execute(cell), "cell", "body_only")
            variants["%%body_only"] = "%%body_only\nx = 1"
            compared = load_compared(shell, args.compare.resolve(), tmp)
            variants["%%energy_compared"] = "%%energy_compared\nx = 1"
        if not args.no_codecarbon and not args.no_peers:
            try:
                shell.run_cell(
                    "from codecarbon import OfflineEmissionsTracker\n"
                    "cc = OfflineEmissionsTracker(country_iso_code='USA', save_to_file=False, log_level='error',"
                    " measure_power_secs=15)\n")
                variants["CodeCarbon start/stop"] = "cc.start()\nx = 1\ncc.stop()"
            except Exception as exc:  # noqa: BLE001 - the peer is optional
                print(f"CodeCarbon unavailable: {exc!r}", file=sys.__stderr__)
        # Warm every path once (imports, first sqlite writes, MLflow's import in our writer).
        for src in variants.values():
            shell.run_cell(src)
        import ipython_energy

        ipython_energy.flush(120)
        if args.compare is not None:
            compared.flush(120)

    times: dict[str, list[float]] = {name: [] for name in variants}
    times["autolog (plain cell measured)"] = []
    names = list(variants)
    rng = random.Random(0)
    magics = shell.magics_manager.registry["EnergyMagics"]
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        for _ in range(args.cells):
            rng.shuffle(names)
            for name in names:
                t0 = time.perf_counter()
                shell.run_cell(variants[name])
                times[name].append(time.perf_counter() - t0)
            magics.set_autolog(True)
            t0 = time.perf_counter()
            shell.run_cell("x = 1")
            times["autolog (plain cell measured)"].append(time.perf_counter() - t0)
            magics.set_autolog(False)
            sink.seek(0)
            sink.truncate()
        flushed = ipython_energy.flush(300)
        if args.compare is not None:
            flushed = compared.flush(300) and flushed

    loads = load_ext_times(args.loads)
    plain = percentile(times["plain cell"], 0.5)
    rows = []
    for name, values in times.items():
        p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
        rows.append((name, p50 * 1e3, p95 * 1e3, (p50 - plain) * 1e3))
    energy_added = next(r[3] for r in rows if r[0] == "%%energy")

    out = []
    out.append(f"cells per variant: {args.cells}, interleaved; python {sys.version.split()[0]}; "
               f"{os.cpu_count()} CPUs; sensors: {', '.join(f'{d.name}={d.method}' for d in ipython_energy.tracker().meter.domains)}")
    out.append("")
    out.append("| variant | p50 ms | p95 ms | added p50 ms | added vs %%energy |")
    out.append("| --- | ---: | ---: | ---: | ---: |")
    for name, p50, p95, added in rows:
        ratio = "" if name == "plain cell" or energy_added <= 0 else f"{added / energy_added:.1f}×"
        out.append(f"| {name} | {p50:.3f} | {p95:.3f} | {added:+.3f} | {ratio} |")
    out.append("")
    out.append(f"`%load_ext ipython_energy`: median {statistics.median(loads):.1f} ms, max {max(loads):.1f} ms "
               f"over {len(loads)} fresh interpreters (target ≤ 150 ms)")
    out.append(f"%%energy added p50: {energy_added:.3f} ms (target ≤ 0.5 ms); every measurement reached MLflow: {flushed}")
    if args.compare is not None:
        other = next(r[3] for r in rows if r[0] == "%%energy_compared")
        body = next(r[3] for r in rows if r[0] == "%%body_only")
        out.append(f"%%energy_compared ({args.compare}) added p50: {other:.3f} ms; this checkout / compared: "
                   f"{energy_added / other:.2f}; above %%body_only: {energy_added - body:.3f} ms vs "
                   f"{other - body:.3f} ms")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
