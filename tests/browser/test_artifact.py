"""The sweep's MLflow artifact (charts.sweep_html) opened in Chromium, offline: hostile names
are text, no script from the data runs, and the numbers are readable without vega."""

from __future__ import annotations

import pytest
from conftest import ARTIFACTS

from ipython_energy import charts, rollup

pytestmark = pytest.mark.browser

HOSTILE = '<img src=x onerror="window.__pwned=1;alert(1)">'
BREAKOUT = "</script><script>window.__pwned=2;alert(2)</script>"


def test_artifact_is_inert_and_readable_offline(page, tmp_path):
    rows = [{"run_id": f"{i:032x}", "name": [HOSTILE, BREAKOUT][i % 2], "status": "finished", "run_index": i,
             "energy_j": 10.0 * i, "params": {"note": BREAKOUT}, "provenance": {"methods": "cpu=estimated"}}
            for i in range(1, 4)]
    data = rollup.build_sweep_data({"name": BREAKOUT, "planned": 5}, rows)
    path = tmp_path / "energy_sweep.html"
    charts.save_sweep_html(data, str(path), inline=False)
    blocked: list[str] = []
    page.route("http*://**/*", lambda route: (blocked.append(route.request.url), route.abort()))
    page.goto(path.as_uri())
    page.wait_for_function("document.getElementById('chart-note').textContent.length > 0")
    assert "numbers are in the table" in page.inner_text("#chart-note")
    body = page.inner_text("body")
    assert HOSTILE in body and BREAKOUT in body  # shown as text
    assert page.locator("img").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert blocked and all("cdn.jsdelivr.net" in u for u in blocked)  # only vega itself was asked for
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "f-artifact-offline.png"), full_page=True)
    assert not page.problems, page.problems
