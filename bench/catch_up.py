"""Catching up after a tracking-server outage: the time per journalled run once the server is back.

    .venv/bin/python bench/catch_up.py [--runs 128] [--outage-s 30] [--backend sqlite|postgres] [--tree PATH]

What it does, all real: starts a real ``mlflow server`` (sqlite file, or a fresh database on a
real PostgreSQL started by tests/helpers/postgres.py), starts a sweep through the writer and
waits until it is in MLflow, kills the server (SIGKILL), hands the writer N runs of that sweep
(each: start with 3 params, one cell's metrics, end with its energy: what a ``%%energy`` run
makes) while the server is down for ``--outage-s`` seconds, restarts the server on the same
store, and times the writer until every event is in MLflow (``Writer.flush``).  Then it checks
what MLflow holds: N children, run numbers 1..N, the sweep's last total at step N equal to the
sum of the children.

``--tree`` runs another checkout's ``ipython_energy`` (the before/after in docs/benchmarks.md).
Prints one markdown table row: backend, runs, outage, catch-up seconds, ms per run, requests per run
(the server's access log from its restart until the writer has caught up), the load average then.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real ``mlflow server`` on 127.0.0.1 that can be killed and started again on its store."""

    def __init__(self, workdir: Path, store_uri: str):
        self.workdir, self.store_uri, self.port = workdir, store_uri, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300.0) -> None:
        log = open(self.workdir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", self.store_uri, "--default-artifact-root", str(self.workdir / "artifacts"),
             "--workers", "1"], cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # Without MLflow's job runner (GenAI jobs, which nothing here uses): its consumer processes
            # would take CPU from the server on a small machine (as in tests/conftest.py).
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("mlflow server did not come up")

    def requests_since(self, offset: int) -> int:
        """The HTTP requests in the server's access log after byte ``offset`` of it."""
        with open(self.workdir / "server.log", "rb") as log:
            log.seek(offset)
            return sum(1 for line in log if b'HTTP/1.1" ' in line)

    def log_size(self) -> int:
        path = self.workdir / "server.log"
        return path.stat().st_size if path.exists() else 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def run_events(uri: str, sweep_uid: str, i: int):
    from ipython_energy.events import Metrics, RunEnd, RunStart

    t = int(time.time() * 1000)
    uid = f"{sweep_uid}-r{i}"
    energy = 10.0 + i / 16
    return [RunStart(uid, f"trial {i}", t, uri, "bench", sweep_uid=sweep_uid,
                     params={"lr": str(10 ** -(i % 5)), "batch": str(32 << (i % 3)), "seed": str(i)},
                     tags={"energy.session": "bench"}),
            Metrics(uid, (("cell_energy_j", energy / 2, 1, t + 1), ("cell_duration_s", 0.5, 1, t + 1))),
            RunEnd(uid, "FINISHED", t + 2, (("energy_j", energy, 0, t + 2), ("duration_s", 1.0, 0, t + 2)),
                   {"energy.methods": "gpu0=counter"})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=128)
    ap.add_argument("--outage-s", type=float, default=30.0)
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose ipython_energy is measured")
    args = ap.parse_args()
    sys.path[:0] = [str(args.tree), str(ROOT)]
    work = Path(tempfile.mkdtemp(prefix="catch-up-"))
    os.environ["IPYTHON_ENERGY_HOME"] = str(work / "home")
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

    pg = None
    if args.backend == "postgres":
        from tests.helpers.postgres import PostgresServer, missing_reason

        if missing_reason():
            sys.exit(f"no PostgreSQL here: {missing_reason()}")
        pg = PostgresServer()
        pg.start()
        store_uri = pg.new_database()
    else:
        store_uri = f"sqlite:///{work / 'server.db'}"
    server = Server(work, store_uri)
    try:
        server.start()
        from ipython_energy.events import SweepStart
        from ipython_energy.spool import Spool
        from ipython_energy.writer import Writer

        writer = Writer(Spool.create("bench"), retry_max_s=0.5)
        writer.submit(SweepStart("sweep", "catch-up", int(time.time() * 1000), server.uri, "bench"))
        assert writer.flush(300), "the sweep did not start"
        server.kill()
        down = time.monotonic()
        for i in range(args.runs):
            for event in run_events(server.uri, "sweep", i):
                writer.submit(event)
        time.sleep(max(args.outage_s - (time.monotonic() - down), 0.0))
        server.start()
        up, offset = time.monotonic(), server.log_size()
        assert writer.flush(3600), "not caught up"
        took = time.monotonic() - up
        time.sleep(0.5)  # the last access-log lines
        sent = server.requests_since(offset)
        check(server.uri, args.runs)
        writer.close()
        print(f"| {args.backend} | {args.runs} | {args.outage_s:g} s | {took:.1f} s | {took / args.runs * 1000:.0f} ms "
              f"| {sent / args.runs:.2f} | {os.getloadavg()[0]:.1f} |")
    finally:
        server.kill()
        if pg is not None:
            pg.stop()


def check(uri: str, n: int) -> None:
    """What MLflow holds after the catch-up: N children numbered 1..N, the last total their sum."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench")
    found = client.search_runs([exp.experiment_id], max_results=5000)
    children = [r for r in found if r.data.tags.get("energy.kind") == "run"]
    (parent,) = [r for r in found if r.data.tags.get("energy.kind") == "sweep"]
    assert len(children) == n, len(children)
    assert sorted(int(c.data.tags["energy.run_index"]) for c in children) == list(range(1, n + 1))
    last = max(client.get_metric_history(parent.info.run_id, "sweep_energy_j"), key=lambda m: (m.step, m.value))
    assert last.step == n and last.value == math.fsum(c.data.metrics["energy_j"] for c in children), last


if __name__ == "__main__":
    main()
