"""The README's MLflow steps, followed in MLflow's own UI (a real ``mlflow server`` process over a
sqlite store, Debian's Chromium): the sweep that ipython-energy wrote is found with its runs and
its ``sweep_energy_j`` column.  Hardware seam: the replay sensor (a flat 100 W + 20 W trace).
Screenshots go to test-artifacts/mlflow_ui_*.png."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import ARTIFACTS

from tests.conftest import MlflowServer

# a sweep written in a fresh process (it imports mlflow), an mlflow server's start and the UI's
# loads: over 60 s on a 2-core machine
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

RUNS = ("lr-0.1", "lr-0.01", "lr-0.001")
SCRIPT = textwrap.dedent(f"""
    import time
    import ipython_energy as energy

    with energy.sweep("lr-sweep", planned=3):
        for name in {RUNS!r}:
            with energy.run(name, params={{"lr": name[3:]}}):
                time.sleep(0.3)
    assert energy.flush(120), "flush timed out"
""")


def write_sweep(tmp_path, energy_home, trace, uri) -> None:
    """A real sweep of three runs, written by ipython_energy's Python API in a process of its own."""
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "IPYTHON_ENERGY_HOME": str(energy_home), "IPYTHON_ENERGY_SENSORS": f"replay:{trace}",
           "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"mlflow_ui_{name}.png"))


def test_readme_mlflow_steps_find_the_sweep_its_runs_and_its_total(tmp_path, energy_home, flat_trace, page):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_sweep(tmp_path, energy_home, flat_trace, uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ipython-energy")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    (sweep,) = client.search_runs([exp.experiment_id], "tags.`energy.kind` = 'sweep'")
    total_j = sweep.data.metrics["sweep_energy_j"]

    server = MlflowServer(tmp_path, backend_store_uri=uri)
    try:
        server.start(timeout_s=300.0)  # a busy 2-core machine: its first start can take minutes
        # wide enough that the grid draws the added column (it draws only the columns in view)
        page.set_viewport_size({"width": 2400, "height": 900})
        # README: open the UI, switch "GenAI" to "Model training", click the experiment
        page.goto(server.uri + "/")
        page.get_by_text("Model training", exact=True).first.click()
        page.get_by_role("link", name="ipython-energy").first.click()
        page.wait_for_url(re.compile(r".*/experiments/\d+/runs\?.*"), timeout=60_000)
        page.get_by_role("link", name="lr-sweep").first.wait_for(timeout=60_000)
        shot(page, "1-runs")
        # the sweep's runs are nested under it: expand the sweep's row
        row = page.get_by_role("row").filter(has_text="lr-sweep").first
        row.get_by_role("button").first.click()
        for name in RUNS:
            page.get_by_role("link", name=name, exact=True).first.wait_for(timeout=30_000)
        shot(page, "2-sweep-expanded")
        # README: filter the sweeps, add the sweep_energy_j column
        box = page.get_by_test_id("search-box")
        box.fill("tags.`energy.kind` = 'sweep'")
        box.press("Enter")
        page.get_by_text("1 matching run").first.wait_for(timeout=30_000)
        page.get_by_role("button", name="Columns", exact=True).click()
        page.get_by_text("sweep_energy_j", exact=True).first.click()
        page.keyboard.press("Escape")
        page.wait_for_timeout(1500)
        shot(page, "3-sweep-energy-column")
        page.locator('[role="columnheader"][col-id*="sweep_energy_j"]').first.wait_for(timeout=30_000)
        cell = page.locator('[role="gridcell"][col-id*="sweep_energy_j"]').first
        cell.wait_for(timeout=30_000)
        shown = float(re.search(r"[\d.]+", cell.inner_text()).group())
    finally:
        server.kill()
    assert shown == pytest.approx(total_j, rel=1e-3, abs=0.01)
    assert not page.problems, page.problems
