"""The tracking server's own CPU time per request of each kind a backlog of runs sends.

    .venv/bin/python bench/request_cost.py [--n 64]

Starts a real ``mlflow server`` on a sqlite file (as bench/catch_up.py does), sends ``--n`` of
each request one after another through the writer's own client, and reads the CPU time of the
server's process group from ``/proc`` before and after each kind: the floor under the catch-up's
time per run, whatever the client does.  Prints one markdown table row per kind: server CPU,
client CPU and wall time per request.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def group_cpu_s(pgid: int) -> float:
    """User and system CPU seconds of every live process in process group ``pgid``."""
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    n = ap.parse_args().n
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import requests
    from catch_up import Server
    from mlflow.entities import Metric, Param, RunTag

    from ipython_energy.transport import Pace, writer_client

    work = Path(tempfile.mkdtemp(prefix="request-cost-"))
    server = Server(work, f"sqlite:///{work / 'server.db'}")
    server.start()
    try:
        client = writer_client(server.uri, Pace())
        experiment = client.create_experiment("cost")
        pgid = os.getpgid(server.proc.pid)
        tags = {f"energy.tag{i}": "x" * 20 for i in range(10)}
        ids: list[str] = []

        def measure(name, call) -> None:
            cpu, wall, own = group_cpu_s(pgid), time.perf_counter(), time.process_time()
            for i in range(n):
                call(i)
            print(f"| {name} | {(group_cpu_s(pgid) - cpu) / n * 1000:.1f} ms "
                  f"| {(time.process_time() - own) / n * 1000:.1f} ms | {(time.perf_counter() - wall) / n * 1000:.1f} ms |")

        measure("`runs/create` (10 tags, a name)", lambda i: ids.append(
            client.create_run(experiment, start_time=1, tags=tags, run_name=f"r{i}").info.run_id))
        measure("`runs/log-batch` (3 params, 4 metrics, 3 tags)", lambda i: client.log_batch(
            ids[i], metrics=[Metric(f"m{j}", 1.0, 1, 0) for j in range(4)],
            params=[Param(f"p{j}", "1") for j in range(3)], tags=[RunTag(f"t{j}", "x") for j in range(3)]))
        measure("`runs/update`", lambda i: client.set_terminated(ids[i], "FINISHED", 5))
        measure("`GET /health`", lambda i: requests.get(server.uri + "/health", timeout=30))
    finally:
        server.kill()


if __name__ == "__main__":
    main()
