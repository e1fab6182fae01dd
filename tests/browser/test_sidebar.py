"""The Energy sidebar in a real JupyterLab, in Chromium.  Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from conftest import ROOT, open_sidebar, shoot
from layout_data import experiment_id, log_repeat_sweep, log_sweep

pytestmark = pytest.mark.browser

# the runs' bars; the lighter parts at low utilisation are a layer of their own (named lowutil), and so
# are the bins of older runs (binned)
BARS = "#ipython-energy-sidebar .jp-EnergyPanel-sweepChart .mark-rect:not(.lowutil_marks):not(.binned_marks) path"
LOW_PARTS = "#ipython-energy-sidebar .jp-EnergyPanel-sweepChart .mark-rect.lowutil_marks path"
API_PATH = "/ipython-energy/api/"


def hover_bar(page, n: int) -> None:
    """Hover bar n near its lower left corner (the total line may cross its middle), scrolled into
    the middle of the panel first (cards above the chart can push it under the status bar)."""
    bar = page.locator(BARS).nth(n)
    bar.evaluate("e => e.scrollIntoView({block: 'center'})")
    box = bar.bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] - 2)


def legend_labels_past_the_panel(panel) -> list[tuple[str, float]]:
    """The sweep chart's legend labels, each with how far (px) it reaches past the panel's right edge."""
    edge = panel.bounding_box()
    edge = edge["x"] + edge["width"]
    labels = panel.locator(".jp-EnergyPanel-sweepChart .role-legend-label text")
    out = []
    for i in range(labels.count()):
        box = labels.nth(i).bounding_box()
        out.append((labels.nth(i).text_content(), box["x"] + box["width"] - edge))
    return out


def client_for(lab):
    from mlflow.tracking import MlflowClient

    store = lab.base / "notebooks"
    store.mkdir(exist_ok=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


def energy_value(text: str) -> float:
    """'1.23 kJ' -> 1230.0"""
    m = re.match(r"([\d.]+) (G|M|k)?J", text.strip())
    assert m, text
    return float(m.group(1)) * {"G": 1e9, "M": 1e6, "k": 1e3, None: 1.0}[m.group(2)]


def test_bars_appear_and_total_rises_while_a_sweep_is_logged(lab, page):
    """(a) A sweep logged run by run from another process (MLflow client, docs/metrics.md layout)."""
    uri, client = client_for(lab)
    experiment_id(client, "live-exp")
    lab.register_kernel(uri, "live-exp")
    writer = subprocess.Popen([sys.executable, str(ROOT / "tests" / "server" / "layout_data.py"), uri, "live-exp",
                               "lr-sweep", "5", "2.5", "400"], stdout=subprocess.PIPE, text=True)
    try:
        panel = open_sidebar(page, lab)
        total = panel.locator(".jp-EnergyPanel-totalStat .jp-EnergyPanel-statValue")
        total.wait_for(timeout=30_000)
        seen: list[tuple[int, float, str]] = []
        live_seen = False
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and writer.poll() is None:
            bars = page.locator(BARS).count()
            seen.append((bars, energy_value(total.inner_text()), panel.locator(".jp-EnergyPanel-latest").inner_text()))
            live_seen = live_seen or "so far" in seen[-1][2]
            if len(seen) == 4:
                shoot(page, panel, "a-sweep-live")
            time.sleep(1.0)
        assert writer.wait(30) == 0
        page.wait_for_function(
            f"document.querySelectorAll('{BARS}').length === 5", timeout=15_000)
        # the sweep has ended: the next poll shows it finished, with every run's final energy
        panel.locator(".jp-EnergyPanel-sweepTitle .jp-EnergyPanel-finished").wait_for(timeout=15_000)
        final_total = energy_value(total.inner_text())
        shoot(page, panel, "a-sweep-done")
        legend = legend_labels_past_the_panel(panel)
    finally:
        if writer.poll() is None:
            writer.kill()
    counts = [b for b, _, _ in seen]
    totals = [t for _, t, _ in seen]
    assert counts == sorted(counts) and counts[-1] > counts[0] >= 0, seen
    assert totals == sorted(totals) and totals[-1] > totals[0], seen
    assert live_seen, "a running run's live energy was never shown"
    # 5 runs of 400, 440, 480, 400, 440 J
    assert final_total == pytest.approx(2160.0, rel=0.01)
    # the status legend is readable whole at the sidebar's default width (nothing clipped)
    assert [name for name, _ in legend] == ["running", "finished", "failed", "killed"]
    assert not [name for name, past in legend if past > 0.5], legend
    assert not page.problems, page.problems


def test_rebound_flag_for_two_sweeps(lab, page):
    """(b) Cheaper runs, more of them: −58% J/run, +110% total."""
    uri, client = client_for(lab)
    exp = experiment_id(client, "models")
    log_sweep(client, exp, "resnet50-grid", [100.0] * 10, planned=10)
    log_sweep(client, exp, "resnet18-grid", [42.0] * 50, planned=60, budget_j=2500.0)
    lab.register_kernel(uri, "models")
    panel = open_sidebar(page, lab)
    rebound = panel.locator(".jp-EnergyPanel-rebound")
    rebound.wait_for(timeout=30_000)
    assert rebound.locator(".jp-EnergyPanel-reboundLabel").inner_text() == "\u221258% J/run, +110% total"
    text = rebound.inner_text()
    assert "resnet18-grid" in text and "resnet50-grid" in text
    assert "1.00 kJ → 2.10 kJ" in text and "100 J → 42.0 J" in text
    interval = rebound.locator(".jp-EnergyPanel-reboundInterval").inner_text()
    assert interval == "J/run \u221258%, total +110%; no repeats: no interval"
    page.wait_for_function(f"document.querySelectorAll('{BARS}').length === 50", timeout=15_000)
    page.wait_for_selector("#ipython-energy-sidebar .jp-EnergyPanel-experimentChart svg.marks")
    shoot(page, panel, "b-rebound")
    assert not page.problems, page.problems


def test_rebound_with_repeats_shows_its_interval(lab, page):
    """Sweeps whose configurations ran with repeats (warm-ups, group parents among the runs): the
    rebound card and the row's tooltip show both changes with their 95 % intervals, and an
    apparent rebound inside the noise gets a card that says so, unflagged."""
    from ipython_energy import query
    from ipython_energy.rollup import format_interval, format_percent

    uri, client = client_for(lab)
    exp = experiment_id(client, "repeats")
    log_repeat_sweep(client, exp, "base-grid", [[100.0, 103.0, 98.0], [99.0, 102.0, 101.0]], warmups=[108.0] * 2)
    log_repeat_sweep(client, exp, "lean-grid", [[61.0, 59.0, 63.0]] * 5, warmups=[66.0] * 5)
    log_repeat_sweep(client, exp, "noisy-grid", [[1.0, 2.0, 170.0]] * 8)
    lab.register_kernel(uri, "repeats")
    expected = query.SourceReader(uri).experiment_data("repeats")
    lean, noisy = expected["sweeps"][1]["rebound"], expected["sweeps"][2]["within_noise"]

    def changes(record):
        i = record["interval"]
        return (f"J/run {format_percent(i['mean_change'])} (95% CI {format_interval(*i['mean_change_ci'])}), "
                f"total {format_percent(i['total_change'])} (95% CI {format_interval(*i['total_change_ci'])})")

    panel = open_sidebar(page, lab)
    cards = panel.locator(".jp-EnergyPanel-rebound")
    page.wait_for_function("document.querySelectorAll('#ipython-energy-sidebar .jp-EnergyPanel-rebound').length === 2",
                           timeout=30_000)
    flagged = cards.nth(0)
    assert "Rebound: lean-grid" in flagged.inner_text() and "vs base-grid" in flagged.inner_text()
    assert flagged.locator(".jp-EnergyPanel-reboundInterval").inner_text() == changes(lean)
    i = lean["interval"]
    headline = f"{format_percent(i['mean_change'])} J/run, {format_percent(i['total_change'])} total"
    assert flagged.locator(".jp-EnergyPanel-reboundLabel").inner_text() == headline
    assert re.fullmatch(r"J/run \u2212\d+% \(95% CI \u2212\d+\u2026\u2212\d+%\), "
                        r"total \+\d+% \(95% CI \+\d+\u2026\+\d+%\)", changes(lean))
    calm = cards.nth(1)
    assert "jp-mod-withinNoise" in calm.get_attribute("class")
    assert "No rebound beyond noise: noisy-grid vs lean-grid" in calm.inner_text()
    assert calm.locator(".jp-EnergyPanel-reboundInterval").inner_text() == changes(noisy)
    assert "within run-to-run noise: no rebound claimed" in calm.inner_text()
    rows = panel.locator(".jp-EnergyPanel-sweepRow")
    assert rows.nth(1).get_attribute("title") == f"rebound vs base-grid: {changes(lean)}"
    assert "jp-EnergyPanel-rebounding" not in rows.nth(2).get_attribute("class")
    page.wait_for_selector("#ipython-energy-sidebar .jp-EnergyPanel-experimentChart svg.marks")
    shoot(page, panel, "g-rebound-interval")
    assert not page.problems, page.problems


def test_empty_state_tells_a_new_user_what_to_do(lab, page):
    """(c) No kernel has registered and there is no mlflow.db: say how to start."""
    panel = open_sidebar(page, lab)
    empty = panel.locator(".jp-EnergyPanel-empty")
    empty.wait_for(timeout=30_000)
    text = empty.inner_text()
    assert "%load_ext ipython_energy" in text and "%%energy --run NAME" in text and "%energy sweep NAME" in text
    shoot(page, panel, "c-empty")
    assert not page.problems, page.problems


HOSTILE = '<img src=x onerror="window.__pwned=1;alert(1)">'
HOSTILE_SCRIPT = "</script><script>window.__pwned=2;alert(2)</script>"


def test_hostile_names_stay_text(lab, page):
    """(d) Sweep, run and param names that are HTML render as text; no script runs."""
    uri, client = client_for(lab)
    exp = experiment_id(client, "hostile")
    log_sweep(client, exp, HOSTILE, [10.0, 20.0], run_names=[HOSTILE_SCRIPT, HOSTILE],
              params=[{"note": HOSTILE}, {"note": HOSTILE_SCRIPT}])
    log_sweep(client, exp, HOSTILE_SCRIPT, [5.0] * 10)  # rebound card carries both names
    lab.register_kernel(uri, "hostile")
    from ipython_energy.paths import write_json_atomic

    (lab.home / "live").mkdir(mode=0o700)
    import os

    write_json_atomic(lab.home / "live" / "k1.json", {
        "session": "k1", "pid": os.getpid(), "updated_at": time.time(), "power_w": 20.0, "estimated": True,
        "methods": {HOSTILE: "estimated"}, "total_j": 100.0, "cells_j": 60.0, "between_cells_j": 40.0,
        "active_run": {"name": HOSTILE, "energy_j": 1.0}, "active_sweep": {"name": HOSTILE_SCRIPT, "total_j": 2.0}})
    panel = open_sidebar(page, lab)
    panel.locator(".jp-EnergyPanel-rebound").wait_for(timeout=30_000)
    panel.locator(".jp-EnergyPanel-sweepRow", has_text=HOSTILE).first.click()
    page.wait_for_function(f"document.querySelectorAll('{BARS}').length === 2", timeout=15_000)
    # the names are on the page as text ...
    assert HOSTILE in panel.inner_text() and HOSTILE_SCRIPT in panel.inner_text()
    # ... and never became elements
    assert page.locator("#ipython-energy-sidebar img, #ipython-energy-sidebar script").count() == 0
    # hover a bar: the vega tooltip shows the run's params as text too
    hover_bar(page, 1)
    tooltip = page.locator("#vg-tooltip-element")
    tooltip.wait_for(state="visible", timeout=10_000)
    assert HOSTILE_SCRIPT in tooltip.inner_text()
    assert page.locator("#vg-tooltip-element img, #vg-tooltip-element script").count() == 0
    shoot(page, panel, "d-hostile")
    page.wait_for_timeout(2500)  # two more polls
    assert page.evaluate("window.__pwned") is None
    assert not page.problems, page.problems


def test_hover_shows_params_and_provenance(lab, page):
    uri, client = client_for(lab)
    exp = experiment_id(client, "prov")
    log_sweep(client, exp, "grid", [120.0, 80.0], params=[{"lr": 0.1, "depth": 3}, {"lr": 0.01, "depth": 5}],
              estimated=True)
    lab.register_kernel(uri, "prov")
    panel = open_sidebar(page, lab)
    page.wait_for_function(f"document.querySelectorAll('{BARS}').length === 2", timeout=30_000)
    assert "estimated" in panel.locator(".jp-EnergyPanel-sweepTitle").inner_text()
    hover_bar(page, 0)
    tooltip = page.locator("#vg-tooltip-element")
    tooltip.wait_for(state="visible", timeout=10_000)
    text = tooltip.inner_text()
    assert "depth=3, lr=0.1" in text
    assert "methods=cpu=estimated" in text and "sensors=cpu-model" in text and "coverage=1.000" in text
    assert "estimated=true" in text
    shoot(page, panel, "e-hover")


def test_low_utilisation_is_the_lighter_part_of_each_bar(lab, page):
    """Issue 11, item 3: a run's energy at low utilisation is the lower, lighter part of its bar, as
    tall as that energy, with the threshold in its tooltip; a run without the figure has none."""
    uri, client = client_for(lab)
    exp = experiment_id(client, "lowutil")
    log_sweep(client, exp, "util-grid", [400.0, 300.0, 200.0], low_util=[160.0, None, 150.0])
    lab.register_kernel(uri, "lowutil")
    panel = open_sidebar(page, lab)
    page.wait_for_function(f"document.querySelectorAll('{BARS}').length === 3", timeout=30_000)
    page.wait_for_function(f"document.querySelectorAll('{LOW_PARTS}').length === 2", timeout=15_000)
    bars = [page.locator(BARS).nth(i).bounding_box() for i in range(3)]
    parts = [page.locator(LOW_PARTS).nth(i).bounding_box() for i in range(2)]
    # each part sits at the bottom of its run's bar, as wide, and as tall as its share of the energy
    for part, bar, share in ((parts[0], bars[0], 160 / 400), (parts[1], bars[2], 150 / 200)):
        assert part["x"] == pytest.approx(bar["x"], abs=1.5) and part["width"] == pytest.approx(bar["width"], abs=1.5)
        assert part["y"] + part["height"] == pytest.approx(bar["y"] + bar["height"], abs=1.5)
        assert part["height"] == pytest.approx(share * bar["height"], abs=2.0)
    # lighter: a white overlay over the status colour
    fill = page.locator(LOW_PARTS).first.get_attribute("fill")
    opacity = float(page.locator(LOW_PARTS).first.get_attribute("fill-opacity") or
                    page.locator(LOW_PARTS).first.get_attribute("opacity") or 1)
    assert fill in ("white", "#fff", "#ffffff") and 0 < opacity < 1
    box = parts[0]
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] - 2)
    tooltip = page.locator("#vg-tooltip-element")
    tooltip.wait_for(state="visible", timeout=10_000)
    assert "160 J (40 %) at < 30 % utilisation" in tooltip.inner_text()
    latest = panel.locator(".jp-EnergyPanel-latest").inner_text()
    assert "150 J (75%) at < 30% utilisation" in latest
    shoot(page, panel, "f-low-util")
    assert not page.problems, page.problems


def test_polling_stops_while_the_panel_is_hidden(lab, page):
    uri, client = client_for(lab)
    exp = experiment_id(client, "poll")
    log_sweep(client, exp, "grid", [1.0])
    lab.register_kernel(uri, "poll")
    requests: list[float] = []
    urls: list[str] = []

    def seen(request) -> None:
        if API_PATH in request.url:
            requests.append(time.monotonic())
            urls.append(request.url)

    page.on("request", seen)
    panel = open_sidebar(page, lab)
    page.wait_for_function(f"document.querySelectorAll('{BARS}').length === 1", timeout=30_000)
    page.wait_for_timeout(4.5 * 1000)
    t0 = time.monotonic()
    page.wait_for_timeout(4.5 * 1000)
    visible_rate = sum(1 for t in requests if t >= t0)
    assert 2 <= visible_rate <= 4, visible_rate  # ≥ 2 polls in 4.5 s: at least every 2 s
    # one request per poll, for everything the panel shows
    assert {u.split(API_PATH)[1].split("?")[0] for u in urls} == {"poll"}, urls
    page.locator('.jp-SideBar [data-id="ipython-energy-sidebar"]').click()  # collapse the sidebar
    panel.wait_for(state="hidden")
    page.wait_for_timeout(1.0 * 1000)
    t1 = time.monotonic()
    page.wait_for_timeout(5.0 * 1000)
    assert [t for t in requests if t >= t1] == []
    # from the click on: the one request of the poll that showing the panel starts can come
    # before the panel counts as visible here
    t2 = time.monotonic()
    page.locator('.jp-SideBar [data-id="ipython-energy-sidebar"]').click()
    panel.wait_for(state="visible")
    page.wait_for_timeout(1.5 * 1000)
    assert [t for t in requests if t >= t2], "polling did not resume when the panel was shown"


NOTEBOOK_RUNNER = r'''
import sys, nbformat
from nbclient import NotebookClient
# "%energy flush" right after the sweep starts: MLflow's import and the new store's creation happen
# before the CPU-bound cells (a busy main thread starves that first import of the GIL on a slow VM).
cells = ["%load_ext ipython_energy", "%energy sweep nb-sweep --planned 8", "%energy flush"]
for i in range(6):
    cells.append(f"%%energy --run nb-run-{i + 1} --param i={i}\nimport time\nt0 = time.time()\n"
                 f"while time.time() - t0 < 4.5:\n    sum(range(10000))")
cells += ["%energy end", "%energy flush"]
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
NotebookClient(nb, timeout=180, kernel_name="python3").execute()
for c in nb.cells:
    for out in c.get("outputs", []):
        sys.stdout.write(out.get("text", "") + str(out.get("ename", "")))
'''


def test_a_notebook_sweep_with_the_magic_appears_live(lab, page):
    """(a, end to end) A real kernel runs %%energy cells in a directory that is not the server's
    root, with its own ./mlflow.db; the sidebar finds it through the kernel's registration alone."""
    elsewhere = lab.base / "notebooks-elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("MLFLOW_", "IPYTHON_ENERGY_"))}
    env.update({"IPYTHON_ENERGY_HOME": str(lab.home), "PYTHONPATH": str(ROOT)})
    kernel = subprocess.Popen([sys.executable, "-c", NOTEBOOK_RUNNER], cwd=elsewhere, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        panel = open_sidebar(page, lab)
        total = panel.locator(".jp-EnergyPanel-totalStat .jp-EnergyPanel-statValue")
        total.wait_for(timeout=90_000)
        seen, live_seen, shot = [], False, False
        while kernel.poll() is None and len(seen) < 120:
            seen.append((page.locator(BARS).count(), energy_value(total.inner_text())))
            latest = panel.locator(".jp-EnergyPanel-latest").inner_text()
            if "so far" in latest:
                live_seen = True
                if not shot and seen[-1][0] >= 2:
                    shoot(page, panel, "a-notebook-live")
                    shot = True
            page.wait_for_timeout(700)
        output = kernel.communicate(timeout=120)[0]
        assert kernel.returncode == 0, output
        page.wait_for_function(f"document.querySelectorAll('{BARS}').length === 6", timeout=20_000)
        shoot(page, panel, "a-notebook-done")
    finally:
        if kernel.poll() is None:
            kernel.kill()
    assert (elsewhere / "mlflow.db").is_file() and not (lab.root / "mlflow.db").exists()
    counts, totals = [c for c, _ in seen], [t for _, t in seen]
    assert counts == sorted(counts) and counts[-1] > counts[0], seen
    assert totals == sorted(totals) and totals[-1] > totals[0], seen
    assert live_seen, "the running cell's live energy never showed"
    assert "estimated" in panel.inner_text()  # no RAPL / GPU counter on this machine: a labelled estimate
    assert not page.problems, page.problems
