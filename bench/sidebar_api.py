"""Sidebar API latency for a sweep of 1,000 (or 10,000) runs, beside the plain MLflow search it replaces.

    .venv/bin/python bench/sidebar_api.py [--runs 1000] [--requests 200] [--backend sqlite|server]
    .venv/bin/python bench/sidebar_api.py --runs 10000 --requests 60 --polls 30

What it does, all real: writes one sweep of N runs into a sqlite store as real MLflow runs in
one transaction (layout of docs/metrics.md, over 3 hosts x 2 processes; the last run stays
RUNNING; tests/server/layout_data.py ``bulk_sweep``), starts a real ``jupyter server`` process with
the ipython_energy server extension (found through a kernel registration file), then polls

* ``GET /ipython-energy/api/sweeps/<source>/<sweep>`` (what the sidebar polls every 2 s),
* ``GET /ipython-energy/api/experiments/<source>``,

while another thread logs ``live_energy_j`` to the running run every 0.5 s, so every poll
has something new.  Beside it, the same question asked the plain way:
``MlflowClient.search_runs`` for all children of the sweep (pages of 1,000).
Each request after the first hands back the ``version`` of the previous reply (``since``),
as the sidebar does, so it carries only what changed.

Then a whole sidebar poll, both ways, alternating (``--polls`` of each):

* ``GET /ipython-energy/api/poll?source=<source>`` (one request, what the sidebar sends now),
* the four requests the sidebar sent before that endpoint: ``experiments`` and ``session``
  together, then ``experiments/<source>``, then ``sweeps/<source>/<sweep>``.

Prints markdown tables (p50 / p95 / max in ms; the first, cold request separately; requests
and bytes per poll).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "server")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, headers: dict[str, str] | None = None, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(name: str, times_s: list[float], note: str = "") -> str:
    ms = [t * 1000 for t in times_s]
    return (f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {pct(ms, 0.95):.1f} | {max(ms):.1f} | {note} |")


def log_big_sweep(uri: str, runs: int) -> tuple[str, str]:
    """One sweep of ``runs`` children over 3 hosts x 2 processes, the last one RUNNING, written
    as real MLflow runs in one transaction (tests/server/layout_data.py ``bulk_sweep``)."""
    from layout_data import bulk_sweep, experiment_id
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = experiment_id(client, "bench")
    t0 = time.monotonic()
    sweep = bulk_sweep(client, exp, "bench-sweep", runs, hosts=3, processes_per_host=2, planned=runs + 100)
    print(f"logged {runs} runs in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return sweep.run_id, sweep.children[-1]


def all_children(client, experiment_id: str, sweep_id: str) -> list:
    """Every child of the sweep, 1,000 a page (MLflow's most per page on some stores)."""
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{sweep_id}'",
                                  max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--polls", type=int, default=100, help="whole sidebar polls of each kind (0: skip)")
    ap.add_argument("--backend", choices=["sqlite", "server"], default="sqlite",
                    help="sqlite: a sqlite store; server: a real `mlflow server` process in front of it")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sidebar-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        uri = f"sqlite:///{work / 'mlflow.db'}"
        with contextlib.redirect_stdout(sys.stderr):
            sweep_id, running_id = log_big_sweep(uri, args.runs)
        if args.backend == "server":
            port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                 "--backend-store-uri", uri, "--default-artifact-root", str(work / "artifacts"), "--workers", "1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            uri = f"http://127.0.0.1:{port}"
            wait_http(uri + "/health")

        from mlflow.tracking import MlflowClient

        from ipython_energy.paths import write_json_atomic

        home = work / "energy-home"
        (home / "kernels").mkdir(parents=True, mode=0o700)
        write_json_atomic(home / "kernels" / "bench.json", {
            "session": "bench", "pid": os.getpid(), "tracking_uri": uri, "experiment_name": "bench",
            "cwd": str(work), "started_at": time.time()})
        config = work / "jupyter-config"
        config.mkdir()
        (config / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"ipython_energy": True}}}))
        port, token = free_port(), secrets.token_hex(16)
        env = {**os.environ, "IPYTHON_ENERGY_HOME": str(home), "JUPYTER_CONFIG_DIR": str(config),
               "PYTHONPATH": str(ROOT)}
        env.pop("MLFLOW_TRACKING_URI", None)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
             "--port", str(port), f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        auth = {"Authorization": f"token {token}"}
        base = f"http://127.0.0.1:{port}/ipython-energy/api"
        wait_http(f"http://127.0.0.1:{port}/api/status", auth)

        def get(path: str) -> tuple[float, bytes]:
            t0 = time.perf_counter()
            with urllib.request.urlopen(urllib.request.Request(base + path, headers=auth), timeout=60) as r:
                body = r.read()
            return time.perf_counter() - t0, body

        _, listing = get("/experiments")
        source = json.loads(listing)["sources"][0]["id"]
        started = time.perf_counter()
        cold_sweep, body = get(f"/sweeps/{source}/{sweep_id}")
        cold_bytes = len(body)
        assert json.loads(body)["totals"]["runs"] == args.runs
        cold_exp, _ = get(f"/experiments/{source}")
        while json.loads(body).get("loading"):  # older runs still being read in the background
            time.sleep(0.2)
            body = get(f"/sweeps/{source}/{sweep_id}")[1]
        complete_s = time.perf_counter() - started

        client = MlflowClient(tracking_uri=uri)
        stop = threading.Event()

        def live_writer() -> None:
            from mlflow.entities import Metric

            step = 0
            while not stop.wait(0.5):
                step += 1
                now = int(time.time() * 1000)
                client.log_batch(running_id, metrics=[Metric("live_energy_j", 10.0 * step, now, step),
                                                      Metric("live_power_w", 20.0, now, step)])

        writer = threading.Thread(target=live_writer, daemon=True)
        writer.start()
        sweep_times, sweep_bytes, exp_times, search_times = [], [], [], []
        last_live, version = None, ""
        search_every = 4 if args.runs <= 1000 else args.requests  # 10,000 runs: once (10 s or more)
        exp_id = client.get_run(sweep_id).info.experiment_id
        for i in range(args.requests):
            # as the sidebar does: hand back the version it has, get only what changed
            t, body = get(f"/sweeps/{source}/{sweep_id}" + (f"?since={version}" if version else ""))
            sweep_times.append(t)
            sweep_bytes.append(len(body))
            reply = json.loads(body)
            version = reply.get("version", "")
            last_live = reply["latest_run"]["energy_j"]
            exp_times.append(get(f"/experiments/{source}")[0])
            if i % search_every:
                time.sleep(0.05)
                continue
            t0 = time.perf_counter()
            children = all_children(client, exp_id, sweep_id)
            search_times.append(time.perf_counter() - t0)
            assert len(children) == args.runs
            time.sleep(0.05)
        assert last_live and last_live > 0, "the running run's live energy never reached the API"

        pair = concurrent.futures.ThreadPoolExecutor(2)

        def four_requests() -> tuple[float, int, int]:
            """The sidebar's poll before GET poll: listing and session at once, then two more."""
            t0 = time.perf_counter()
            first = [f.result()[1] for f in (pair.submit(get, "/experiments"), pair.submit(get, "/session"))]
            bodies = [*first, get(f"/experiments/{source}")[1], get(f"/sweeps/{source}/{sweep_id}")[1]]
            return time.perf_counter() - t0, len(bodies), sum(len(b) for b in bodies)

        poll_version = {"": ""}

        def one_request() -> tuple[float, int, int]:
            since = poll_version[""]
            t, body = get(f"/poll?source={source}&sweep={sweep_id}" + (f"&since={since}" if since else ""))
            reply = json.loads(body)
            assert reply["selected"]["sweep"] == sweep_id
            poll_version[""] = reply["sweep"].get("version", "")
            return t, 1, len(body)

        polls: dict[str, list[tuple[float, int, int]]] = {"one": [], "four": []}
        for i in range(args.polls):
            for kind, fn in (("one", one_request), ("four", four_requests))[:: 1 if i % 2 else -1]:
                polls[kind].append(fn())
            time.sleep(0.05)
        pair.shutdown()
        stop.set()
        writer.join(5)

        store = "sqlite store" if args.backend == "sqlite" else "`mlflow server` (sqlite behind it)"
        print(f"\nSweep of {args.runs} runs (one running, live metrics logged every 0.5 s), {store}, "
              f"{args.requests} polls; cold = first request after server start "
              f"(sweep {cold_sweep * 1000:.0f} ms and {cold_bytes:,} bytes, experiment {cold_exp * 1000:.0f} ms); "
              f"every run read {complete_s:.1f} s after the first request; sweep replies after the first: "
              f"median {statistics.median(sweep_bytes[1:] or sweep_bytes):,.0f} bytes, max {max(sweep_bytes[1:] or sweep_bytes):,} bytes.\n")
        print("| request | n | p50 ms | p95 ms | max ms | note |")
        print("| --- | ---: | ---: | ---: | ---: | --- |")
        print(summary("`GET /ipython-energy/api/sweeps/<source>/<sweep>`", sweep_times,
                      "HTTP round trip incl. chart spec"))
        print(summary("`GET /ipython-energy/api/experiments/<source>`", exp_times, "sweeps + rebound + chart"))
        print(summary("plain `MlflowClient.search_runs` (children of the sweep)", search_times,
                      "in-process, no HTTP, no chart"))
        if args.polls:
            print(f"\nOne whole sidebar poll, {args.polls} of each kind, alternating.\n")
            print("| sidebar poll | n | p50 ms | p95 ms | max ms | requests/poll | bytes/poll (median) |")
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
            for kind, name in (("one", "`GET poll?source=<source>&sweep=<sweep>&since=<version>` (now)"),
                               ("four", "`experiments` + `session`, then `experiments/<source>`, "
                                        "then `sweeps/<source>/<sweep>` (before)")):
                rows = polls[kind]
                row = summary(name, [t for t, _, _ in rows]).rsplit("|", 2)[0]
                print(f"{row}| {rows[0][1]} | {statistics.median(b for _, _, b in rows):,.0f} |")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
