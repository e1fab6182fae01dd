"""The sweep view at sweep scale, on a real in-process Jupyter server reading a real MLflow
sqlite store: recent runs one by one and older ones binned, energy per host, and polls that
carry only what changed since the version the browser has (``since``)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict

import pytest
from conftest import payload, register_kernel
from layout_data import SweepLog, bulk_sweep, experiment_id
from tornado.httpclient import HTTPClientError

from ipython_energy.sweep_window import RECENT_RUNS

API = ("ipython-energy", "api")


async def source_id(jp_fetch) -> str:
    return payload(await jp_fetch(*API, "experiments"))["sources"][0]["id"]


async def read_all(jp_fetch, sid: str, sweep_id: str, timeout_s: float = 300.0) -> dict:
    """The sweep once every run is read (a big sweep's older runs load in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = payload(await jp_fetch(*API, "sweeps", sid, sweep_id))
        if not reply["loading"]:
            return reply
        assert time.monotonic() < deadline, "the older runs were never read"
        await asyncio.sleep(0.5)


def merge(whole: dict, delta: dict) -> dict:
    """What the browser does with a delta (src/model.ts mergeSweep), for comparing."""
    runs = {r["index"]: r for r in whole["runs"] if delta["first"] <= r["index"] <= delta["last"]}
    runs.update({r["index"]: r for r in delta["runs"]})
    return {**whole, "runs": [runs[i] for i in sorted(runs)], "bins": delta.get("bins", whole["bins"]),
            "forecast": delta["forecast"], "budget": delta["budget"]}


def children_in_mlflow(client, exp_id: str, sweep_id: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{sweep_id}'", max_results=1000,
                                  page_token=token)
        out += page
        token = page.token
        if not token:
            return out


@pytest.fixture
def big(energy_home, tracking):
    """A sweep of 700 runs over 3 hosts x 2 processes, the last one running."""
    uri, client = tracking
    exp = experiment_id(client, "exp")
    sweep = bulk_sweep(client, exp, "wide", 700, hosts=3, processes_per_host=2, planned=800)
    register_kernel(energy_home, uri, "exp")
    return {"client": client, "exp": exp, "sweep": sweep}


async def test_a_big_sweep_is_recent_runs_and_bins_and_hosts_as_in_mlflow(jp_fetch, big):
    client, sweep = big["client"], big["sweep"]
    sid = await source_id(jp_fetch)
    first = payload(await jp_fetch(*API, "sweeps", sid, sweep.run_id))
    # the first reply counts every run, the older ones from the sweep's logged totals
    assert first["totals"]["runs"] == 700
    reply = await read_all(jp_fetch, sid, sweep.run_id)
    assert reply["totals"]["energy_j"] == pytest.approx(first["totals"]["energy_j"])

    runs = children_in_mlflow(client, big["exp"], sweep.run_id)
    energy = {r.info.run_id: r.data.metrics.get("energy_j", r.data.metrics.get("live_energy_j")) for r in runs}
    data = reply["chart"]["datasets"]
    shown, bins = data["runs"], data["bins"]
    assert RECENT_RUNS <= len(shown) < RECENT_RUNS + 10 and shown[-1]["index"] == 700
    # the bins cover runs 1.. up to the first run shown, in order, without gaps or overlaps
    assert bins[0]["first"] == 1 and bins[-1]["last"] == shown[0]["index"] - 1
    assert all(a["last"] + 1 == b["first"] for a, b in zip(bins, bins[1:]))
    assert sum(b["runs"] for b in bins) + len(shown) == 700
    assert math.fsum([b["energy_j"] for b in bins] + [r["energy_j"] for r in shown]) == pytest.approx(
        math.fsum(energy.values()))
    for b in bins:
        assert b["min_j"] <= b["mean_j"] <= b["max_j"]
    assert reply["totals"]["energy_j"] == pytest.approx(math.fsum(energy.values()))

    # energy per host, and the processes on each, as the runs' tags say
    per_host: dict[str, list] = defaultdict(lambda: [0, 0.0, set()])
    for r in runs:
        entry = per_host[r.data.tags["energy.host"]]
        entry[0] += 1
        entry[1] += energy[r.info.run_id]
        entry[2].add(r.data.tags["energy.session"])
    assert {h["host"]: (h["runs"], pytest.approx(h["energy_j"]), h["processes"]) for h in reply["hosts"]} == {
        host: (n, pytest.approx(j), len(procs)) for host, (n, j, procs) in per_host.items()}
    assert reply["totals"]["hosts"] == 3 and reply["totals"]["processes"] == 6
    assert len(str(reply).encode()) < 200_000


async def test_a_poll_with_since_carries_only_what_changed_and_merges_to_the_whole(jp_fetch, big):
    sweep = big["sweep"]
    sid = await source_id(jp_fetch)
    v1 = await read_all(jp_fetch, sid, sweep.run_id)
    # nothing changed: no chart, an empty delta, the same version
    same = payload(await jp_fetch(*API, "sweeps", sid, sweep.run_id, params={"since": v1["version"]}))
    assert same["chart"] is None and same["version"] == v1["version"]
    assert same["delta"]["runs"] == [] and "bins" not in same["delta"]

    # the running run ends, a new one starts and reports live energy
    sweep.end_run(sweep.children[-1], 150.0, 2.0)
    new = sweep.start_run("run-701")
    sweep.live(new, 5.0, 1.0, 1)
    delta = payload(await jp_fetch(*API, "sweeps", sid, sweep.run_id, params={"since": v1["version"]}))
    whole = payload(await jp_fetch(*API, "sweeps", sid, sweep.run_id))
    assert delta["version"] == whole["version"] != v1["version"]
    assert {r["index"] for r in delta["delta"]["runs"]} >= {700, 701}
    assert len(delta["delta"]["runs"]) < 10
    assert merge(v1["chart"]["datasets"], delta["delta"]) == whole["chart"]["datasets"]
    assert delta["totals"] == whole["totals"] and delta["totals"]["runs"] == 701

    # the poll route takes the same token
    polled = payload(await jp_fetch(*API, "poll", params={"source": sid, "sweep": sweep.run_id,
                                                          "since": whole["version"]}))
    assert polled["sweep"]["chart"] is None and polled["sweep"]["delta"]["runs"] == []


async def test_an_unknown_version_gets_the_whole_chart_and_a_malformed_one_is_refused(jp_fetch, energy_home,
                                                                                        tracking):
    uri, client = tracking
    exp = experiment_id(client, "exp")
    sweep = SweepLog.start(client, exp, "small")
    sweep.end_run(sweep.start_run("a"), 10.0, 1.0)
    register_kernel(energy_home, uri, "exp")
    sid = await source_id(jp_fetch)
    reply = payload(await jp_fetch(*API, "sweeps", sid, sweep.run_id, params={"since": "0badc0de.1"}))
    assert "delta" not in reply and len(reply["chart"]["datasets"]["runs"]) == 1
    assert reply["chart"]["datasets"]["bins"] == []
    # one host: the breakdown has one line, and the sidebar shows none
    assert [h["host"] for h in reply["hosts"]] == ["unknown"] and reply["totals"]["hosts"] == 1
    for bad in ("../x", "1", "zzzzzzzz.1"):
        with pytest.raises(HTTPClientError) as err:
            await jp_fetch(*API, "sweeps", sid, sweep.run_id, params={"since": bad})
        assert err.value.code == 400
        with pytest.raises(HTTPClientError) as err:
            await jp_fetch(*API, "poll", params={"since": bad})
        assert err.value.code == 400
