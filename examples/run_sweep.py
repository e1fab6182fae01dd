"""Run examples/sweep.ipynb headlessly through a real Jupyter kernel, then print what it measured.

    python examples/run_sweep.py [--notebook examples/sweep.ipynb] [--timeout 600]

The notebook runs a baseline sweep, a "lean" sweep of cheaper runs that explores more
configurations, and an A/B comparison with repeats.  This script then reads MLflow back and
prints both sweeps' totals and mean J/run, the rebound verdict, and the A/B verdict.

The kernel starts in the current directory, so the runs land in MLflow's default store there
(``mlflow.db``) unless ``MLFLOW_TRACKING_URI`` is set.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def execute(notebook: Path, timeout_s: int) -> None:
    """Run every cell in a real kernel; print the extension's load line."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": os.getcwd()}})
    client.execute()
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else ():
            if out.get("output_type") == "stream" and "ipython-energy" in out.get("text", "") \
                    and "sensors:" in out.get("text", ""):
                print(out["text"].strip())
                return


def _search(client, experiment_id: str, filter_string: str, limit: int = 1000) -> list:
    return client.search_runs([experiment_id], filter_string=filter_string, max_results=limit,
                              order_by=["attributes.start_time DESC"])


def sweep_summary(client, experiment_id: str, name: str) -> dict:
    """One sweep read back from MLflow: its totals, and its runs' energy summed independently."""
    found = _search(client, experiment_id, f"tags.`energy.kind` = 'sweep' and tags.`energy.sweep` = '{name}'", 1)
    if not found:
        raise SystemExit(f"no sweep {name!r} in MLflow")
    parent = found[0]
    children = [r for r in _search(client, experiment_id, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
                if r.data.tags.get("energy.kind", "run") == "run"]
    m = parent.data.metrics
    return {
        "name": name, "run_id": parent.info.run_id, "runs": len(children),
        "total_j": m.get("sweep_energy_j", math.nan), "in_runs_j": m.get("sweep_runs_energy_j", math.nan),
        "between_j": m.get("sweep_between_runs_energy_j", math.nan),
        "children_sum_j": math.fsum(r.data.metrics.get("energy_j", 0.0) for r in children),
        "estimated": any(r.data.tags.get("energy.estimated") == "true" for r in children),
    }


def report(uri: str, experiment: str, names: list[str]) -> int:
    from mlflow.tracking import MlflowClient

    from ipython_energy.measurement import format_energy
    from ipython_energy.query import SourceReader

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} in {uri}")
    sweeps = [sweep_summary(client, exp.experiment_id, n) for n in names]
    failed = 0
    for s in sweeps:
        mean = s["in_runs_j"] / s["runs"] if s["runs"] else math.nan
        print(f"sweep {s['name']!r}: {format_energy(s['total_j'])} in total over {s['runs']} runs "
              f"({format_energy(s['in_runs_j'])} in runs, {format_energy(s['between_j'])} between them), "
              f"{format_energy(mean)} per run" + ("  [estimated]" if s["estimated"] else ""))
        # The runs ran one after another: the sweep's energy in runs is the sum of their energies.
        if abs(s["in_runs_j"] - s["children_sum_j"]) > 1e-6 * max(1.0, s["children_sum_j"]):
            print(f"error: sweep_runs_energy_j {s['in_runs_j']} of {s['name']!r} differs from the sum of "
                  f"its runs {s['children_sum_j']}", file=sys.stderr)
            failed = 1

    data = SourceReader(uri).experiment_data(experiment)
    lean = sweeps[-1]
    rebound = next((r for r in data["rebounds"] if r["run_id"] == lean["run_id"]), None)
    if rebound:
        note = rebound.get("note") or ""
        print(f"\nrebound: {lean['name']!r} vs {rebound['vs_name']!r}: {rebound['label']}: each run got cheaper, "
              f"the sweep got more expensive" + (f" ({note})" if note else ""))
    else:
        print(f"\nrebound: none: {lean['name']!r} did not cost more in total while its runs got cheaper")

    comparisons = _search(client, exp.experiment_id, "tags.`energy.kind` = 'comparison'", 1)
    if comparisons:
        print(f"A/B: {comparisons[0].data.tags.get('energy.verdict', '?')}")
    else:
        print("error: the notebook logged no comparison", file=sys.stderr)
        failed = 1
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebook", type=Path, default=HERE / "sweep.ipynb")
    ap.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args(argv)
    from ipython_energy.config import from_env

    config, _ = from_env()
    uri = config.resolved_tracking_uri()
    stamp = os.environ.setdefault("DEMO_STAMP", time.strftime("%m%d-%H%M%S"))  # the kernel inherits it
    t0 = time.monotonic()
    print(f"Running {args.notebook} in a real kernel (cwd {os.getcwd()}) …", flush=True)
    execute(args.notebook, args.timeout)
    print(f"Notebook finished in {time.monotonic() - t0:.0f} s.\n")
    failed = report(uri, config.experiment, [f"baseline-{stamp}", f"lean-{stamp}"])
    venv = Path(sys.executable).parent
    print(f"""
Where to look:
  JupyterLab with the Energy sidebar:  {venv}/jupyter lab            (open the ⚡ Energy panel on the left:
                                       both sweeps side by side, the lean one flagged as a rebound)
  MLflow UI on the same data:          {venv}/mlflow ui --backend-store-uri {uri}
                                       (the experiment {config.experiment!r} opens on its training runs;
                                       filter  tags.`energy.kind` = 'sweep'  and add the column sweep_energy_j)""")
    return failed


if __name__ == "__main__":
    sys.exit(main())
