"""The sidebar's session card in a real JupyterLab, in Chromium: the session's three parts, from a
real kernel (jupyter_client; replay sensor at a flat 120 W) that ran a sweep from Python inside one
cell, next to the card of a kernel of the previous version (cells / idle between cells)."""

from __future__ import annotations

import os
import re
import time

import pytest
from conftest import open_sidebar, shoot

from tests.helpers.kernel import Kernel, energy_env
from tests.helpers.mlflow_readback import create_store

pytestmark = pytest.mark.browser

POWER_W = 120.0
SWEEP_CELL = """
import time
import ipython_energy as energy
time.sleep(1.0)  # unmeasured work in the same cell
with energy.sweep("grid"):
    for lr in (0.1, 0.01, 0.001):
        with energy.run(params={"lr": lr}):
            time.sleep(0.8)
"""


def legend(card) -> dict[str, float]:
    """The card's legend as {label: joules}: 'runs & measured cells 288 J' -> {'runs & measured cells': 288.0}."""
    out = {}
    keys = card.locator(".jp-EnergyPanel-splitLegend span")
    for i in range(keys.count()):
        m = re.match(r"(.+) ([\d.]+) (G|M|k)?J$", keys.nth(i).inner_text().strip())
        assert m, keys.nth(i).inner_text()
        out[m.group(1)] = float(m.group(2)) * {"G": 1e9, "M": 1e6, "k": 1e3, None: 1.0}[m.group(3)]
    return out


def total(card) -> float:
    m = re.match(r"Session ([\d.]+) (G|M|k)?J$", card.locator(".jp-EnergyPanel-sessionTotal").inner_text().strip())
    assert m
    return float(m.group(1)) * {"G": 1e9, "M": 1e6, "k": 1e3, None: 1.0}[m.group(2)]


def test_session_card_shows_three_parts_and_old_kernels_fall_back(lab, page):
    store = lab.base / "notebooks"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    create_store(uri)
    trace = lab.base / "flat.csv"
    trace.write_text("t_s,gpu0_w,cpu_w\n0.0,100.0,20.0\n3600.0,100.0,20.0\n")
    kernel = Kernel(store, energy_env(lab.home, trace, uri))
    try:
        kernel.execute("%load_ext ipython_energy")
        time.sleep(1.0)  # idle
        kernel.execute(SWEEP_CELL)  # 2.4 s in runs, ~1 s other cells: the "cells 0.00 J"
        kernel.execute("time.sleep(1.5)")  # a busy unmeasured cell
        # a kernel of the previous version: only cells_j / between_cells_j in its live file
        from ipython_energy.paths import private_dir, write_json_atomic

        write_json_atomic(private_dir("live", base=lab.home) / "old-kernel.json", {
            "session": "old-kernel", "pid": os.getpid(), "updated_at": time.time() - 5, "power_w": 40.0,
            "estimated": False, "methods": {"gpu0": "counter"}, "duration_s": 100.0,
            "total_j": 109.0, "cells_j": 0.0, "between_cells_j": 109.0, "active_run": None, "active_sweep": None})

        panel = open_sidebar(page, lab)
        new_card = panel.locator(".jp-EnergyPanel-session", has=page.locator(".jp-EnergyPanel-keyOther"))
        new_card.wait_for(timeout=60_000)
        old_card = panel.locator(".jp-EnergyPanel-session", has_text="idle between cells")
        old_card.wait_for(timeout=30_000)
        parts = legend(new_card)
        assert list(parts) == ["runs & measured cells", "other cells", "idle"]
        in_runs, other, idle = parts.values()
        assert in_runs == pytest.approx(POWER_W * 2.4, rel=0.1)
        assert other >= POWER_W * 2.5 * 0.95 and idle >= POWER_W * 1.0 * 0.95
        # the three parts add up to the total the card shows (each rounded to 3 digits)
        assert in_runs + other + idle == pytest.approx(total(new_card), rel=0.02)
        # the bar has three segments whose widths add up to the whole
        widths = [float(new_card.locator(f".jp-EnergyPanel-split{k}").evaluate("e => parseFloat(e.style.width)"))
                  for k in ("Cells", "Other", "Idle")]
        assert sum(widths) == pytest.approx(100.0, abs=0.01) and all(w > 0 for w in widths)
        assert legend(old_card) == {"cells": 0.0, "idle between cells": 109.0}
        assert new_card.locator(".jp-EnergyPanel-keyOther").get_attribute("title").startswith("other cells: ")
        shoot(page, panel, "f-session-parts")
        assert not page.problems, page.problems
    finally:
        kernel.shutdown()
