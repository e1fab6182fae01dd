"""Run examples/sweep.ipynb headlessly through a real Jupyter kernel, then print the sweep's table.

    python examples/run_sweep.py [--notebook examples/sweep.ipynb] [--timeout 600]

The kernel starts in the current directory, so the runs land in MLflow's default store there
(``mlflow.db``) unless ``MLFLOW_TRACKING_URI`` is set.  The table is read back from MLflow.
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
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": os.getcwd()}})
    client.execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and "ipython-energy" in out.get("text", "") \
                    and "sensors:" in out.get("text", ""):
                print(out["text"].strip())
                return


def sweep_table(name: str) -> tuple[list[str], float, float, str]:
    from ipython_energy.config import from_env

    config, _ = from_env()
    from mlflow.tracking import MlflowClient

    uri = config.resolved_tracking_uri()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(config.experiment)
    if exp is None:
        raise SystemExit(f"no experiment {config.experiment!r} in {uri}")
    sweeps = client.search_runs([exp.experiment_id],
                                filter_string=f"tags.`energy.kind` = 'sweep' and tags.`energy.sweep` = '{name}'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    if not sweeps:
        raise SystemExit(f"no sweep {name!r} in {uri}")
    parent = sweeps[0]
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  max_results=1000)
    children.sort(key=lambda r: int(r.data.tags.get("energy.run_index", 0)))
    estimated = any(r.data.tags.get("energy.estimated") == "true" for r in children)
    keys = sorted({k for r in children for k in r.data.params})
    head = f"{'#':>2}  " + "  ".join(f"{k:>8}" for k in keys) + f"  {'energy_j':>10}  {'J/sample':>9}  {'status':<8}  methods"
    lines = [head, "-" * len(head)]
    for r in children:
        m = r.data.metrics
        lines.append(
            f"{r.data.tags.get('energy.run_index', '?'):>2}  "
            + "  ".join(f"{r.data.params.get(k, ''):>8}" for k in keys)
            + f"  {m.get('energy_j', float('nan')):>10.2f}  {m.get('energy_per_samples_j', float('nan')):>9.4f}"
            + f"  {r.info.status:<8}  {r.data.tags.get('energy.methods', '')}")
    total = parent.data.metrics.get("sweep_energy_j", float("nan"))
    in_runs = parent.data.metrics.get("sweep_runs_energy_j", float("nan"))
    between = parent.data.metrics.get("sweep_between_runs_energy_j", float("nan"))
    lines.append("-" * len(head))
    lines.append(f"sweep {name!r} total: {total:.2f} J over {len(children)} runs: {in_runs:.2f} J in runs, "
                 f"{between:.2f} J between them"
                 + (" (estimated: no hardware energy counter on this machine)" if estimated else ""))
    return lines, in_runs, math.fsum(r.data.metrics.get("energy_j", 0.0) for r in children), uri


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebook", type=Path, default=HERE / "sweep.ipynb")
    ap.add_argument("--sweep", default="mlp-digits")
    ap.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    print(f"Running {args.notebook} in a real kernel (cwd {os.getcwd()}) …", flush=True)
    execute(args.notebook, args.timeout)
    print(f"Notebook finished in {time.monotonic() - t0:.0f} s.\n")
    lines, in_runs, children_sum, uri = sweep_table(args.sweep)
    print("\n".join(lines))
    # The runs ran one after another: the sweep's energy in runs is the sum of their energies.
    if abs(in_runs - children_sum) > 1e-9 * max(1.0, abs(children_sum)):
        print(f"error: sweep_runs_energy_j {in_runs} differs from the sum of its runs {children_sum}",
              file=sys.stderr)
        return 1
    venv = Path(sys.executable).parent
    print(f"""
Next:
  JupyterLab with the Energy sidebar:  {venv}/jupyter lab            (open the ⚡ Energy panel on the left)
  MLflow UI on the same data:          {venv}/mlflow ui --backend-store-uri {uri}
                                       then filter  tags.`energy.kind` = 'sweep'  and add the column sweep_energy_j""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
