"""A long session: 10,000 cells with autolog on, in a real IPython shell, logged to an MLflow sqlite
store.  Memory and per-cell overhead must stay flat (the first 1,000 cells against the last
1,000), and every cell must reach MLflow exactly once.

Hardware seam: the replay sensor (flat trace).  The figures are printed (``-s``) and quoted in
docs/reliability.md.
"""

from __future__ import annotations

import gc
import os
import statistics
import time

import pytest

import ipython_energy
from tests.faults.faultkit import figure
from tests.helpers.mlflow_readback import runs

CELLS = 10_000
BLOCK = 1_000


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc/self/statm")
def test_ten_thousand_cells_with_autolog_stay_flat(open_shell, flat_trace, sqlite_uri, capfd):
    ip = open_shell(env={"IPYTHON_ENERGY_SENSORS": f"replay:{flat_trace}", "MLFLOW_TRACKING_URI": sqlite_uri,
                         "IPYTHON_ENERGY_QUIET": "true"})
    plain = []
    for i in range(BLOCK):  # the same cells without measurement, for the overhead
        t0 = time.perf_counter()
        ip.run_cell(f"x = {i}")
        plain.append(time.perf_counter() - t0)
    ip.run_line_magic("energy", "run soak")
    ip.run_line_magic("energy", "autolog on")
    counts, cell_s, marks = [], [], {}
    started = time.monotonic()
    for i in range(CELLS):
        counts.append(ip.execution_count)
        t0 = time.perf_counter()
        result = ip.run_cell(f"x = {i}")
        cell_s.append(time.perf_counter() - t0)
        assert result.success
        if (i + 1) % BLOCK == 0:
            assert ipython_energy.flush(600)  # outside the timed cells: the writer catches up
            gc.collect()
            marks[i + 1] = (rss_mib(), len(gc.get_objects()))
    loop_s = time.monotonic() - started
    ip.run_line_magic("energy", "autolog off")
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(600)

    tracker = ipython_energy.tracker()
    first, last = cell_s[:BLOCK], cell_s[-BLOCK:]
    p50_first, p50_last = statistics.median(first) * 1e3, statistics.median(last) * 1e3
    p50_plain = statistics.median(plain) * 1e3
    (rss1, objs1), (rss10, objs10) = marks[BLOCK], marks[CELLS]
    sampler = tracker.meter.sampler
    # The sampler's ring buffers fill up to their fixed capacity (buffer_s of samples, or that many
    # points when window edges add readings faster) and then stay there: a bound, not a leak.
    buffers = sum(len(s.points) for s in sampler.series.values())
    assert all(len(s.points) <= sampler.capacity for s in sampler.series.values())
    figure(capfd, f"soak: {CELLS} cells in {loop_s:.0f} s; per cell p50 first {BLOCK} {p50_first:.2f} ms, "
                  f"last {BLOCK} {p50_last:.2f} ms (plain cell without the extension {p50_plain:.2f} ms); "
                  f"RSS {rss1:.1f} -> {rss10:.1f} MiB; sampler buffers {buffers} points (capacity "
                  f"{sampler.capacity} per domain); gc objects {objs1} -> {objs10}")
    figure(capfd, "soak RSS per 1000 cells (MiB): " + ", ".join(f"{k}: {v[0]:.1f}" for k, v in sorted(marks.items())))
    assert p50_last <= 1.5 * p50_first + 0.5, "per-cell overhead grew"
    assert rss10 - rss1 < 24, "the process grew by more than 24 MiB over 9,000 cells"
    assert marks[CELLS][0] - marks[CELLS - 3 * BLOCK][0] < 6, "still growing over the last 3,000 cells"
    # IPython itself keeps a few objects per cell (In, the compiled-cell cache); we keep none.
    assert objs10 - objs1 < 4 * (CELLS - BLOCK)
    writer = tracker.writer
    assert writer.status().pending == 0
    assert len(writer._context) < 10  # the start events it keeps for open runs (no public count)
    assert not tracker.open_runs and tracker.meter.open_windows == 0 and tracker.meter.edges_pending == 0

    client, found = runs(sqlite_uri)
    (soak,) = [r for r in found if r.info.run_name == "soak"]
    points = client.get_metric_history(soak.info.run_id, "cell_energy_j")
    assert sorted(p.step for p in points) == counts, "every cell exactly once, at its execution count"
    assert soak.info.status == "FINISHED"
