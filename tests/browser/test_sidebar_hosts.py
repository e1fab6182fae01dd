"""A sweep of many runs from several hosts in the Energy sidebar, in a real JupyterLab and
Chromium: energy per host, older runs binned, polls that carry only what changed.
Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import pytest
from conftest import open_sidebar, shoot
from layout_data import bulk_sweep, experiment_id
from test_sidebar import client_for, energy_value

pytestmark = pytest.mark.browser

BINS = "#ipython-energy-sidebar .jp-EnergyPanel-sweepChart .mark-rect.binned_marks path"
HOST_ROWS = "#ipython-energy-sidebar .jp-EnergyPanel-host"


def test_a_sweep_from_three_hosts_shows_energy_per_host_and_bins_older_runs(lab, page):
    uri, client = client_for(lab)
    exp = experiment_id(client, "wide")
    sweep = bulk_sweep(client, exp, "across-hosts", 600, hosts=3, processes_per_host=2)
    lab.register_kernel(uri, "wide")
    polls: list[dict] = []
    page.on("response", lambda r: polls.append({"url": r.url, "body": r.body()})
            if "/ipython-energy/api/poll" in r.url and r.ok else None)
    panel = open_sidebar(page, lab)

    page.wait_for_function(f"document.querySelectorAll('{HOST_ROWS}').length === 3", timeout=60_000)
    # the older runs are read in the background; the note goes away once they are in
    page.wait_for_selector("#ipython-energy-sidebar .jp-EnergyPanel-loading", state="hidden", timeout=240_000)
    caption = panel.locator(".jp-EnergyPanel-hostsCaption").inner_text()
    assert caption == "3 hosts, 6 processes"

    # each host's line says what MLflow holds for the runs tagged with that host
    expected: dict[str, list] = defaultdict(lambda: [0, 0.0])
    token = None
    while True:
        page_runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{sweep.run_id}'", max_results=1000,
                                       page_token=token)
        for r in page_runs:
            e = expected[r.data.tags["energy.host"]]
            e[0] += 1
            e[1] += r.data.metrics.get("energy_j", r.data.metrics.get("live_energy_j", 0.0))
        token = page_runs.token
        if not token:
            break
    rows = panel.locator(".jp-EnergyPanel-host")
    for i in range(3):
        cells = rows.nth(i).locator("td").all_inner_texts()
        runs, joules = expected[cells[0]]
        assert cells[1] == f"{runs} runs"
        assert energy_value(cells[2]) == pytest.approx(joules, rel=0.01)
        assert cells[4] == "2 proc."

    # older runs drawn as bins, recent ones as bars
    page.wait_for_function(f"document.querySelectorAll('{BINS}').length > 0", timeout=30_000)
    shoot(page, panel, "h-hosts-and-bins")

    # later polls hand back the version they have and get only what changed
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("since=" in p["url"] for p in polls[1:]):
        page.wait_for_timeout(500)
    later = [p for p in polls if "since=" in p["url"]]
    assert later, [p["url"] for p in polls]
    body = json.loads(later[-1]["body"])
    assert body["sweep"]["chart"] is None and "delta" in body["sweep"]
    assert max(len(p["body"]) for p in polls) < 200_000
    assert not page.problems
