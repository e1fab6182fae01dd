"""The sidebar API on a real in-process Jupyter server (pytest-jupyter), reading a real MLflow
sqlite store that lives outside the server's root dir, found through a kernel registration."""

from __future__ import annotations

import json

import pytest
from conftest import payload, register_kernel, write_live
from layout_data import experiment_id, log_repeat_sweep, log_sweep
from tornado.httpclient import HTTPClientError

API = ("ipython-energy", "api")


@pytest.fixture
def logged(energy_home, tracking):
    """Two sweeps (the second rebounds) in experiment 'exp', registered by a 'kernel' elsewhere."""
    uri, client = tracking
    exp = experiment_id(client, "exp")
    big = log_sweep(client, exp, "big", [100.0] * 4, planned=4)
    small = log_sweep(client, exp, "small <img src=x onerror=alert(1)>", [40.0] * 12, budget_j=400.0,
                      params=[{"note": f"</script>{i}"} for i in range(12)])
    register_kernel(energy_home, uri, "exp")
    write_live(energy_home, "s1")
    return {"uri": uri, "big": big, "small": small}


async def routes(jp_fetch, logged):
    listing = payload(await jp_fetch(*API, "experiments"))
    sid = listing["sources"][0]["id"]
    return [("experiments",), ("experiments", sid), ("sweeps", sid, logged["big"].run_id), ("session",), ("poll",)]


async def test_every_route_refuses_requests_without_a_token(jp_fetch, logged):
    for parts in await routes(jp_fetch, logged):
        for headers in ({"Authorization": ""}, {"Authorization": "token wrong"}):
            with pytest.raises(HTTPClientError) as err:
                await jp_fetch(*API, *parts, headers=headers)
            assert err.value.code == 403, parts


async def test_every_route_answers_with_the_token(jp_fetch, logged):
    for parts in await routes(jp_fetch, logged):
        response = await jp_fetch(*API, *parts)
        assert response.code == 200 and response.headers["Content-Type"].startswith("application/json"), parts


async def test_experiments_lists_the_kernels_store_and_never_the_password(jp_fetch, logged):
    data = payload(await jp_fetch(*API, "experiments"))
    src = data["sources"][0]
    assert src["tracking_uri"] == logged["uri"] and src["experiment"] == "exp"
    assert src["origin"] == "kernel" and src["exists"] is True and src["live_sessions"] == 1
    assert "%load_ext ipython_energy" in data["hint"]


async def test_experiment_view_shape_and_rebound(jp_fetch, logged):
    sid = payload(await jp_fetch(*API, "experiments"))["sources"][0]["id"]
    data = payload(await jp_fetch(*API, "experiments", sid))
    assert [s["name"] for s in data["sweeps"]] == ["big", "small <img src=x onerror=alert(1)>"]
    small = data["sweeps"][1]
    assert small["runs"] == 12 and small["mean_energy_per_run_j"] == pytest.approx(40.0)
    assert small["rebound"]["label"] == "\u221260% J/run, +20% total"
    assert small["rebound"]["interval"] is None and small["rebound"]["note"] == "no repeats: no interval"
    assert data["chart"]["$schema"].startswith("https://vega.github.io/schema/vega-lite/v5")


async def test_experiment_view_rebound_with_repeats_shows_its_interval(jp_fetch, energy_home, tracking):
    """Sweeps with repeats: the rebound carries its 95 % intervals, in the record, the label and
    the side-by-side chart's tooltip; an apparent rebound inside the noise is listed apart."""
    uri, client = tracking
    exp = experiment_id(client, "rep")
    log_repeat_sweep(client, exp, "base", [[100.0, 103.0, 98.0], [99.0, 102.0, 101.0]])
    log_repeat_sweep(client, exp, "lean", [[61.0, 59.0, 63.0]] * 5)  # −40 % J/run, +50 % total
    log_repeat_sweep(client, exp, "noisy", [[1.0, 2.0, 170.0]] * 6)  # lower J/run, higher total: all noise
    register_kernel(energy_home, uri, "rep")
    sid = payload(await jp_fetch(*API, "experiments"))["sources"][0]["id"]
    data = payload(await jp_fetch(*API, "experiments", sid))
    base, lean, noisy = data["sweeps"]
    assert base["rebound"] is None and lean["rebound"]["vs_name"] == "base"
    noise = lean["rebound"]["interval"]
    assert noise["level"] == 0.95 and noise["outside"] is True
    assert noise["mean_change_ci"][1] < 0 < noise["total_change_ci"][0]
    assert lean["rebound"]["label"].count("95% CI") == 2
    assert noisy["rebound"] is None
    assert noisy["within_noise"]["vs_name"] == "lean" and noisy["within_noise"]["interval"]["outside"] is False
    assert [r["name"] for r in data["within_noise"]] == ["noisy"]
    chart = json.dumps(data["chart"], ensure_ascii=False)  # the tooltip's notes travel in the spec's data
    assert f"{lean['rebound']['label']} vs base" in chart
    assert f"none beyond noise: {noisy['within_noise']['label']} vs lean" in chart


async def test_sweep_view_shape(jp_fetch, logged):
    sid = payload(await jp_fetch(*API, "experiments"))["sources"][0]["id"]
    data = payload(await jp_fetch(*API, "sweeps", sid, logged["small"].run_id))
    assert data["totals"]["runs"] == 12 and data["totals"]["energy_j"] == pytest.approx(480.0)
    assert data["totals"]["over_budget"] is True
    assert data["latest_run"]["status"] == "finished" and data["latest_run"]["index"] == 12
    chart = data["chart"]
    assert chart["$schema"].startswith("https://vega.github.io/schema/vega-lite/v5")
    assert len(chart["datasets"]["runs"]) == 12 and chart["datasets"]["budget"][0]["budget_j"] == 400.0
    assert chart["datasets"]["runs"][0]["params"] == "note=</script>0"  # names travel as data, untouched


async def test_unknown_ids_are_404(jp_fetch, logged):
    sid = payload(await jp_fetch(*API, "experiments"))["sources"][0]["id"]
    for parts in (("experiments", "0" * 12), ("sweeps", sid, "0" * 32), ("sweeps", "f" * 12, logged["big"].run_id),
                  ("sweeps", sid, logged["big"].children[0])):
        with pytest.raises(HTTPClientError) as err:
            await jp_fetch(*API, *parts)
        assert err.value.code == 404, parts


async def test_no_route_takes_a_uri_or_path(jp_fetch, logged):
    """A URI in the path does not match any route; query parameters are ignored."""
    for parts in (("experiments", "sqlite:%2F%2F%2Fetc%2Fpasswd"), ("sweeps", "..", "..", "etc")):
        with pytest.raises(HTTPClientError) as err:
            await jp_fetch(*API, *parts)
        assert err.value.code == 404
    data = payload(await jp_fetch(*API, "experiments", params={"tracking_uri": "sqlite:////tmp/evil.db"}))
    assert [s["tracking_uri"] for s in data["sources"]] == [logged["uri"]]


async def test_session_view(jp_fetch, logged):
    data = payload(await jp_fetch(*API, "session"))
    s = data["sessions"][0]
    assert s["session"] == "s1" and s["cells_j"] == 1000.0 and s["between_cells_j"] == 250.0 and s["estimated"]


async def test_empty_state_without_any_data(jp_fetch, energy_home):
    data = payload(await jp_fetch(*API, "experiments"))
    assert data["sources"] == [] and "%%energy" in data["hint"]


async def test_source_stays_listed_after_its_kernel_unregisters(jp_fetch, logged, energy_home):
    first = payload(await jp_fetch(*API, "experiments"))["sources"]
    for path in (energy_home / "kernels").glob("*.json"):
        path.unlink()
    again = payload(await jp_fetch(*API, "experiments"))["sources"]
    assert [s["id"] for s in again] == [s["id"] for s in first] and again[0]["live_sessions"] == 0


@pytest.fixture
def configured(jp_server_config, tracking):
    uri, client = tracking
    exp = experiment_id(client, "configured-exp")
    log_sweep(client, exp, "only", [5.0])
    jp_server_config["EnergySidebar"] = {"tracking_uri": uri, "experiment": "configured-exp"}
    return uri


async def test_server_config_overrides_discovery(configured, jp_fetch, energy_home):
    register_kernel(energy_home, "sqlite:////somewhere/else.db", "other")
    data = payload(await jp_fetch(*API, "experiments"))
    assert [(s["tracking_uri"], s["experiment"], s["origin"]) for s in data["sources"]] == [
        (configured, "configured-exp", "config")]
    view = payload(await jp_fetch(*API, "experiments", data["sources"][0]["id"]))
    assert [s["name"] for s in view["sweeps"]] == ["only"]


@pytest.mark.server
async def test_a_kernel_logging_to_a_tracking_server_is_found(jp_fetch, energy_home, mlflow_server):
    """MLFLOW_TRACKING_URI of the kernel is an `mlflow server` (real process): its registration
    carries that URI, and the sidebar reads the sweep through the server's REST API."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    exp = experiment_id(client, "remote")
    sweep = log_sweep(client, exp, "remote-grid", [30.0, 50.0], end=False)
    running = sweep.start_run("still-going")
    sweep.live(running, 12.0, 6.0, 2)
    register_kernel(energy_home, mlflow_server.uri, "remote")
    sources = payload(await jp_fetch(*API, "experiments"))["sources"]
    assert [(s["tracking_uri"], s["exists"]) for s in sources] == [(mlflow_server.uri, True)]
    data = payload(await jp_fetch(*API, "sweeps", sources[0]["id"], sweep.run_id))
    assert data["totals"]["runs"] == 3 and data["totals"]["energy_j"] == pytest.approx(92.0)
    assert data["latest_run"]["live"] is True
    sweep.end_run(running, 20.0, 1.0)
    data = payload(await jp_fetch(*API, "sweeps", sources[0]["id"], sweep.run_id))
    assert data["totals"]["energy_j"] == pytest.approx(100.0) and data["latest_run"]["status"] == "finished"


async def test_an_unreadable_store_does_not_hide_the_others(jp_fetch, logged, energy_home, tmp_path):
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a sqlite database" * 100)
    register_kernel(energy_home, f"sqlite:///{broken}", "exp", session="s2")
    sources = payload(await jp_fetch(*API, "experiments"))["sources"]
    by_uri = {s["tracking_uri"]: s for s in sources}
    assert by_uri[logged["uri"]]["exists"] is True
    assert by_uri[f"sqlite:///{broken}"]["exists"] is False and by_uri[f"sqlite:///{broken}"]["error"]


async def test_poll_is_the_four_views_in_one_reply(jp_fetch, logged):
    """What the sidebar asks every 2 s: the same documents the four routes give, for the source and
    sweep it shows; with nothing picked, the first source and the newest sweep."""
    data = payload(await jp_fetch(*API, "poll"))
    listing = payload(await jp_fetch(*API, "experiments"))
    sid = listing["sources"][0]["id"]
    small = logged["small"].run_id
    assert data["selected"] == {"source": sid, "sweep": small}
    assert data["sources"] == listing["sources"] and data["hint"] == listing["hint"]
    ageless = lambda reply: [{k: v for k, v in s.items() if k != "age_s"} for s in reply["sessions"]]  # noqa: E731
    assert ageless(data["session"]) == ageless(payload(await jp_fetch(*API, "session")))
    assert data["experiment"] == payload(await jp_fetch(*API, "experiments", sid))
    assert data["sweep"] == payload(await jp_fetch(*API, "sweeps", sid, small))
    assert data["sweep"]["totals"]["runs"] == 12 and data["sweep"]["sweep"]["name"].startswith("small")


async def test_poll_shows_the_picked_sweep_until_it_is_gone(jp_fetch, logged):
    sid = payload(await jp_fetch(*API, "experiments"))["sources"][0]["id"]
    big = logged["big"].run_id
    data = payload(await jp_fetch(*API, "poll", params={"source": sid, "sweep": big}))
    assert data["selected"] == {"source": sid, "sweep": big}
    assert data["sweep"]["sweep"]["name"] == "big" and data["sweep"]["totals"]["runs"] == 4
    # a sweep that is not listed (deleted, or a child run) and a source that is not known: the defaults
    for params in ({"sweep": "0" * 32}, {"sweep": logged["big"].children[0]}, {"source": "f" * 12}):
        data = payload(await jp_fetch(*API, "poll", params=params))
        assert data["selected"] == {"source": sid, "sweep": logged["small"].run_id}, params


async def test_poll_follows_the_running_sweep(jp_fetch, energy_home, tracking):
    uri, client = tracking
    exp = experiment_id(client, "exp")
    running = log_sweep(client, exp, "still-going", [10.0, 20.0], end=False)
    log_sweep(client, exp, "done-later", [5.0])
    register_kernel(energy_home, uri, "exp")
    data = payload(await jp_fetch(*API, "poll"))
    assert [s["name"] for s in data["experiment"]["sweeps"]] == ["still-going", "done-later"]
    assert data["selected"]["sweep"] == running.run_id and data["sweep"]["sweep"]["status"] == "running"


async def test_poll_before_any_measurement_is_the_empty_state(jp_fetch, energy_home):
    data = payload(await jp_fetch(*API, "poll"))
    assert data["sources"] == [] and "%%energy" in data["hint"] and data["session"] == {"sessions": []}
    assert data["selected"] == {"source": None, "sweep": None}
    assert data["experiment"] is None and data["sweep"] is None


async def test_poll_takes_only_ids(jp_fetch, logged):
    """The selection travels as query arguments; anything but an id of the right shape is refused."""
    for params in ({"source": "sqlite:////etc/passwd"}, {"sweep": "../../etc"}, {"source": "ABCDEF123456"},
                   {"sweep": "0" * 31}):
        with pytest.raises(HTTPClientError) as err:
            await jp_fetch(*API, "poll", params=params)
        assert err.value.code == 400, params


async def test_poll_while_the_store_does_not_answer_still_brings_the_session(jp_fetch, logged, energy_home):
    """The store breaks after the sidebar found it: the poll says why and still carries the session
    (the kernels' own files), so the power readout keeps moving while MLflow is away."""
    from pathlib import Path

    assert payload(await jp_fetch(*API, "poll"))["sweep"] is not None
    Path(logged["uri"][len("sqlite:///"):]).write_bytes(b"this is not a sqlite database" * 100)
    write_live(energy_home, "s1", power_w=99.0)
    data = payload(await jp_fetch(*API, "poll"))
    assert data["unavailable"].startswith("MLflow is not answering: ")
    assert data["experiment"] is None and data["sweep"] is None
    assert [s["power_w"] for s in data["session"]["sessions"]] == [99.0]
