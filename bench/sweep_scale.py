"""A sweep at scale: W Optuna worker processes x T trials of one study, measured into one mlflow server.

    .venv/bin/python bench/sweep_scale.py [--workers 4] [--trials 250] [--out FILE.json] [--keep]
    .venv/bin/python bench/sweep_scale.py --workers 2 --trials 10 --backend sqlite-server   # a quick smoke run

What it does, all real: starts a PostgreSQL server (tests/helpers/postgres.py) with two
databases, a real ``mlflow server`` on the one (the tests' ``MlflowServer``, MLflow's job runner
off) and the Optuna RDB storage on the other.  Then, twice, W worker processes, each with an
``IPYTHON_ENERGY_HOME`` of its own and, where ``unshare --uts`` works (root), a hostname of its
own, as on W machines, run T trials each of one shared study (``optuna.load_study``):

1. **plain**: ``study.optimize(objective)``, nothing measured (another study, same storage);
2. **measured**: ``study.optimize(ipython_energy.optuna.measure(objective, sweep=NAME))``.

The objective is real CPU work: 10-20 products of 128x128 matrices with numpy (one BLAS thread
per worker), about 15-25 ms a trial on an idle core; the only sensor on the development machine
is the CPU estimate (``cpu-model``), so every joule here is an estimate.  The workers wait at a
start line until all have imported their modules and loaded the study, so process start-up is
not timed; the measured workers' first trial does pay for starting the tracker.

Measured: wall time from the start line to the last worker's last trial, trials per second,
the time ``measure`` adds per trial (inside the worker: the measured call less the objective's
own time; and the two walls' ratio), the writers' lag behind the trials (from the last
trial's end until MLflow has terminated every child run, read from the server's access log, and
until ``ipython_energy.flush`` returns in the last worker: the sweep's totals and close
included), the server's requests per trial (its access log), and the sidebar's view at the end
(``SidebarState`` in this process on the server's URI: the first request, then polls).
Checked, read back from MLflow and Optuna: one parent run, every trial exactly once as a child
with its energy, run numbers 1..N, the parent's ``sweep_runs_energy_j`` the sum of the
children's ``energy_j``, one ``energy.host`` per worker (when hostnames are distinct), each
trial's ``energy_j`` user attribute equal to its child's.  Exits 1 when a check fails.

Prints a markdown table (figure | value) and writes every figure to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

SWEEP = "sweep-scale"
EXPERIMENT = "sweep-scale"
#: One BLAS thread per worker: W workers share the machine's cores, as W machines would not.
ONE_THREAD = {k: "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


# ---------------------------------------------------------------------------------------------
# The worker (this file run with ``worker``): one process, T trials of the shared study
# ---------------------------------------------------------------------------------------------
def objective(trial) -> float:
    """Real CPU work: ``steps`` products of 128x128 matrices (about 1.3 ms each on this VM)."""
    import numpy as np

    x = trial.suggest_float("x", -2.0, 2.0)
    steps = trial.suggest_int("steps", 10, 20)
    a = np.random.default_rng(trial.number).standard_normal((128, 128))
    b = a
    for _ in range(steps):
        b = np.tanh(b @ a / 128)
    return (x - 1.0) ** 2 + float(np.abs(b).mean()) * 1e-3


def worker(args: argparse.Namespace) -> None:
    """Wait at the start line, run the trials, flush; write the timings to ``args.report``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    inner: list[float] = []  # each trial's objective, seconds
    outer: list[float] = []  # each trial as study.optimize called it (measure included), seconds

    def timed_objective(trial):
        t0 = time.perf_counter()
        try:
            return objective(trial)
        finally:
            inner.append(time.perf_counter() - t0)

    def timed(fn):
        def call(trial):
            t0 = time.perf_counter()
            try:
                return fn(trial)
            finally:
                outer.append(time.perf_counter() - t0)
        return call

    if args.measured:
        import ipython_energy as energy
        from ipython_energy.optuna import measure

        measured = measure(timed_objective, sweep=SWEEP)
    Path(args.ready).touch()
    while not os.path.exists(args.go):
        time.sleep(0.01)
    started = time.time()
    if args.measured:
        with measured:
            study.optimize(timed(measured), n_trials=args.trials)
        ended = time.time()
        flushed_ok = energy.flush(3600)
        flushed = time.time()
    else:
        study.optimize(timed(timed_objective), n_trials=args.trials)
        ended = flushed = time.time()
        flushed_ok = True
    Path(args.report).write_text(json.dumps({
        "host": platform.node(), "started": started, "ended": ended, "flushed": flushed,
        "flushed_ok": flushed_ok, "inner_s": inner, "outer_s": outer}))


# ---------------------------------------------------------------------------------------------
# The bench
# ---------------------------------------------------------------------------------------------
def hostnames_work() -> bool:
    """Whether each worker can get a hostname of its own (``unshare --uts``: root only)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0


class Stores:
    """The MLflow store and the Optuna storage: two databases on one PostgreSQL server, or
    (``sqlite-server``) two sqlite files."""

    def __init__(self, backend: str, work: Path):
        self.pg = None
        if backend == "postgres":
            from tests.helpers.postgres import PostgresServer, missing_reason

            if missing_reason():
                sys.exit(f"no PostgreSQL here: {missing_reason()}")
            self.pg = PostgresServer()
            self.pg.start()
            self.mlflow_uri, self.optuna_url = self.pg.new_database(), self.pg.new_database()
        else:
            self.mlflow_uri = f"sqlite:///{work / 'mlflow.db'}"
            self.optuna_url = f"sqlite:///{work / 'optuna.db'}"

    def stop(self) -> None:
        if self.pg is not None:
            self.pg.stop()


def launch(work: Path, phase: str, n: int, trials: int, storage: str, study: str, uri: str,
           own_hosts: bool) -> list[dict]:
    """Start ``n`` workers of ``phase``, release them together once all are ready, wait; their reports."""
    folder = work / phase
    folder.mkdir()
    go = folder / "go"
    base = {k: v for k, v in os.environ.items() if not k.startswith("IPYTHON_ENERGY_")}
    base.update(ONE_THREAD, PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME=EXPERIMENT,
                MLFLOW_DISABLE_TELEMETRY="true", IPYTHON_ENERGY_SENSORS="cpu-model")
    procs = []
    for i in range(n):
        cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--storage", storage, "--study", study,
               "--trials", str(trials), "--ready", str(folder / f"ready-{i}"), "--go", str(go),
               "--report", str(folder / f"report-{i}.json")] + (["--measured"] if phase == "measured" else [])
        if own_hosts:
            cmd = ["unshare", "--uts", "sh", "-c", f'hostname {phase}-w{i} && exec "$0" "$@"', *cmd]
        env = dict(base, IPYTHON_ENERGY_HOME=str(folder / f"home-{i}"))
        log = open(folder / f"worker-{i}.log", "wb")
        procs.append(subprocess.Popen(cmd, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 600
    while not all((folder / f"ready-{i}").exists() for i in range(n)):
        failed = [i for i, p in enumerate(procs) if p.poll() is not None]
        if failed or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            sys.exit(f"{phase} worker {failed} did not start: {(folder / f'worker-{failed[0] if failed else 0}.log').read_text()[-3000:]}")
        time.sleep(0.05)
    go.touch()
    for i, p in enumerate(procs):
        if p.wait() != 0:
            sys.exit(f"{phase} worker {i} failed: {(folder / f'worker-{i}.log').read_text()[-3000:]}")
    return [json.loads((folder / f"report-{i}.json").read_text()) for i in range(n)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def phase_figures(reports: list[dict]) -> dict:
    """Wall time (start line to the last trial's end), trials/s, per-trial times, in seconds."""
    start, end = min(r["started"] for r in reports), max(r["ended"] for r in reports)
    outer = [t for r in reports for t in r["outer_s"]]
    inner = [t for r in reports for t in r["inner_s"]]
    added = [o - i for r in reports for o, i in zip(r["outer_s"], r["inner_s"])]
    return {"wall_s": end - start, "trials": len(outer), "trials_per_s": len(outer) / (end - start),
            "loop_s_per_trial": statistics.fmean(r["ended"] - r["started"] for r in reports) / statistics.fmean(
                len(r["outer_s"]) for r in reports),
            "objective_p50_s": statistics.median(inner), "call_p50_s": statistics.median(outer),
            "added_p50_s": statistics.median(added), "added_p95_s": pct(added, 0.95), "added_max_s": max(added),
            "added_first_s": [r["outer_s"][0] - r["inner_s"][0] for r in reports]}


def requests_in(log: Path, start: int, end: int, split_at: float, children: int) -> dict:
    """The requests the server's access log holds between two byte offsets: by method and path,
    those answered 4xx (a refused run-number claim is a 400), how many came after ``split_at``
    (epoch seconds; the log's times are local, to the second), and when the ``children``-th
    ``runs/update`` was answered: then every child run is terminated in MLflow (a run's end
    batch goes before its ``set_terminated``; the parent's comes after its children's)."""
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    by_path, refused, after, children_in = collections.Counter(), collections.Counter(), 0, None
    for m in re.finditer(r'^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) .*"([A-Z]+ [^ ?"]+)[^"]* HTTP/[\d.]+" (\d{3})',
                         text, re.MULTILINE):
        by_path[m.group(2)] += 1
        if m.group(3).startswith("4"):
            refused[m.group(2)] += 1
        at = time.mktime(time.strptime(m.group(1), "%Y/%m/%d %H:%M:%S"))
        after += at > split_at
        if m.group(2).endswith("/runs/update") and m.group(3) == "200" and children_in is None:
            children -= 1
            children_in = at if children == 0 else None
    return {"total": sum(by_path.values()), "after_last_trial": after, "by_path": dict(by_path.most_common()),
            "refused_4xx": dict(refused.most_common()), "children_in_at": children_in}


def sidebar(uri: str, work: Path, polls: int) -> dict:
    """The sidebar's sweep view at the end, in this process on the server's URI (no HTTP): the
    first ``SidebarState.sweep`` (cold reader), the wait while older runs load, then polls that
    hand back ``version`` as the sidebar does."""
    from ipython_energy.server.handlers import EnergySidebar, SidebarState

    state = SidebarState(EnergySidebar(tracking_uri=uri, experiment=EXPERIMENT), str(work))
    state.warm_up()
    src = state.sources()[0]
    t0 = time.perf_counter()
    (parent,) = [s for s in state.experiment(src.id)["sweeps"] if s["name"] == SWEEP]
    experiment_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reply = state.sweep(src.id, parent["run_id"])
    first_s = time.perf_counter() - t0
    while reply.get("loading"):
        time.sleep(0.2)
        reply = state.sweep(src.id, parent["run_id"])
    loaded_s = time.perf_counter() - t0
    times = []
    for _ in range(polls):
        t0 = time.perf_counter()
        reply = state.sweep(src.id, parent["run_id"], reply["version"])
        json.dumps(reply)
        times.append(time.perf_counter() - t0)
    state.executor.shutdown()
    return {"experiment_s": experiment_s, "first_sweep_s": first_s, "loaded_s": loaded_s,
            "poll_p50_s": statistics.median(times), "poll_max_s": max(times),
            "runs": reply["totals"]["runs"], "hosts": reply["totals"]["hosts"],
            "runs_energy_j": reply["totals"]["runs_energy_j"]}


def checks(uri: str, study, hosts: int) -> tuple[dict[str, bool], dict]:
    """What must hold after the sweep, read back from MLflow and the study: ``({check: passed}, facts)``."""
    from tests.helpers.mlflow_readback import runs, split_sweep

    client, found = runs(uri, EXPERIMENT)
    sweeps, children = split_sweep(found)
    numbers = [int(c.data.tags.get("optuna.trial_number", -1)) for c in children]
    by_number = dict(zip(numbers, children))
    trials = study.get_trials(deepcopy=False)
    indices = sorted(int(c.data.tags["energy.run_index"]) for c in children)
    children_j = math.fsum(c.data.metrics.get("energy_j", math.nan) for c in children)
    parent = client.get_run(sweeps[0].info.run_id) if len(sweeps) == 1 else None
    parent_j = parent.data.metrics.get("sweep_runs_energy_j", math.nan) if parent else math.nan
    seen_hosts = {c.data.tags.get("energy.host") for c in children}
    result = {
        "one parent run, FINISHED": parent is not None and parent.info.status == "FINISHED",
        "every trial COMPLETE": len(trials) > 0 and all(t.state.name == "COMPLETE" for t in trials),
        "every trial exactly once as a child": sorted(numbers) == sorted(t.number for t in trials),
        "every child a child of the parent, FINISHED, with energy_j": parent is not None and all(
            c.data.tags.get("mlflow.parentRunId") == parent.info.run_id and c.info.status == "FINISHED"
            and c.data.metrics.get("energy_j", -1) >= 0 for c in children),
        "run numbers 1..N": indices == list(range(1, len(trials) + 1)),
        "sweep_runs_energy_j = sum of the children": math.isclose(parent_j, children_j, rel_tol=1e-9),
        f"{hosts} host(s)": len(seen_hosts) == hosts,
        "Optuna energy_j = the child's energy_j": all(
            t.number in by_number and t.user_attrs.get("energy_j") == by_number[t.number].data.metrics.get("energy_j")
            for t in trials),
    }
    return result, {"children": len(children), "parents": len(sweeps), "trials": len(trials),
                    "children_energy_j": children_j, "sweep_runs_energy_j": parent_j,
                    "hosts": sorted(map(str, seen_hosts)), "estimated": sorted({c.data.tags.get("energy.estimated", "?")
                                                                             for c in children})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command")
    w = sub.add_parser("worker", help="(internal) one worker process")
    for name in ("--storage", "--study", "--ready", "--go", "--report"):
        w.add_argument(name, required=True)
    w.add_argument("--trials", type=int, required=True)
    w.add_argument("--measured", action="store_true")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--trials", type=int, default=250, help="trials per worker")
    ap.add_argument("--backend", choices=("postgres", "sqlite-server"), default="postgres",
                    help="postgres: PostgreSQL under the mlflow server and Optuna; sqlite-server: two sqlite files")
    ap.add_argument("--polls", type=int, default=5, help="sidebar polls after the first request")
    ap.add_argument("--out", type=Path, help="write every figure here as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the working folder (logs, worker reports)")
    args = ap.parse_args()
    if args.command == "worker":
        return worker(args)
    sys.exit(bench(args))


def bench(args: argparse.Namespace) -> int:
    import optuna
    from tests.conftest import MlflowServer

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="sweep-scale-"))
    os.environ.update(IPYTHON_ENERGY_HOME=str(work / "home"), MLFLOW_DISABLE_TELEMETRY="true")
    own_hosts = hostnames_work()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    stores = Stores(args.backend, work)
    server = MlflowServer(work, backend_store_uri=stores.mlflow_uri)
    try:
        t0 = time.monotonic()
        server.start(timeout_s=600.0)
        server_up_s = time.monotonic() - t0
        sampler = {"sampler": optuna.samplers.RandomSampler(seed=0)}
        optuna.create_study(study_name="plain", storage=stores.optuna_url, **sampler)
        optuna.create_study(study_name="measured", storage=stores.optuna_url, **sampler)
        plain = phase_figures(launch(work, "plain", args.workers, args.trials, stores.optuna_url, "plain",
                                     server.uri, own_hosts))
        log = work / "mlflow-server.log"
        log_start = log.stat().st_size
        reports = launch(work, "measured", args.workers, args.trials, stores.optuna_url, "measured",
                         server.uri, own_hosts)
        measured = phase_figures(reports)
        last_end = max(r["ended"] for r in reports)
        requests = requests_in(log, log_start, log.stat().st_size, last_end, measured["trials"])
        flush = {"lag_s": max(r["flushed"] for r in reports) - last_end,
                 "children_in_s": None if requests["children_in_at"] is None else requests["children_in_at"] - last_end,
                 "per_worker_s": [r["flushed"] - r["ended"] for r in reports],
                 "all_ok": all(r["flushed_ok"] for r in reports)}
        passed, facts = checks(server.uri, optuna.load_study(study_name="measured", storage=stores.optuna_url),
                               args.workers if own_hosts else 1)
        passed["every worker's flush returned True"] = flush["all_ok"]
        view = sidebar(server.uri, work, args.polls)
        passed["the sidebar shows N runs on the hosts"] = (view["runs"], view["hosts"]) == (
            facts["trials"], len(facts["hosts"]))
        passed["the sidebar's runs energy = the children's"] = math.isclose(
            view["runs_energy_j"], facts["children_energy_j"], rel_tol=1e-9)
    finally:
        server.kill()
        stores.stop()
    result = {
        "started": started, "ended": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "backend": args.backend,
        "workers": args.workers, "trials_per_worker": args.trials, "own_hostnames": own_hosts,
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_before": load_before, "load_after": os.getloadavg(), "server_up_s": server_up_s,
        "plain": plain, "measured": measured, "flush": flush, "requests": requests,
        "sidebar": view, "facts": facts, "checks": passed,
    }
    print_table(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    failed = [name for name, ok in passed.items() if not ok]
    for name in failed:
        print(f"CHECK FAILED: {name}", file=sys.stderr)
    return 1 if failed else 0


def print_table(r: dict) -> None:
    p, m, f, v, q = r["plain"], r["measured"], r["flush"], r["sidebar"], r["requests"]
    n = m["trials"]
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    rows = [
        ("workers x trials", f"{r['workers']} x {r['trials_per_worker']} = {n} ({r['backend']}, "
                             f"{'own hostnames' if r['own_hostnames'] else 'one hostname'})"),
        ("wall, plain / measured", f"{p['wall_s']:.1f} s / {m['wall_s']:.1f} s (ratio {m['wall_s'] / p['wall_s']:.2f})"),
        ("trials/s, plain / measured", f"{p['trials_per_s']:.1f} / {m['trials_per_s']:.1f}"),
        ("a worker's loop per trial, plain / measured",
         f"{ms(p['loop_s_per_trial'])} / {ms(m['loop_s_per_trial'])} (+{ms(m['loop_s_per_trial'] - p['loop_s_per_trial'])})"),
        ("objective p50, plain / measured", f"{ms(p['objective_p50_s'])} / {ms(m['objective_p50_s'])}"),
        ("measure's own time per trial, p50 / p95 / max", f"{ms(m['added_p50_s'])} / {ms(m['added_p95_s'])} / {ms(m['added_max_s'])}"),
        ("measure's first trial per worker (tracker start)", ", ".join(ms(s) for s in m["added_first_s"])),
        ("last trial's end to the last child terminated in MLflow (access log, +-1 s)",
         "?" if f["children_in_s"] is None else f"{f['children_in_s']:.0f} s"),
        ("last trial's end to the last worker's flush() returning", f"{f['lag_s']:.1f} s (per worker: "
         + ", ".join(f"{s:.1f}" for s in f["per_worker_s"]) + " s)"),
        ("server requests: all, per trial, after the last trial, refused (4xx)",
         f"{q['total']}, {q['total'] / n:.1f}, {q['after_last_trial']}, {sum(q['refused_4xx'].values())}"),
        ("sidebar: experiment, first sweep view, all loaded", f"{ms(v['experiment_s'])}, {ms(v['first_sweep_s'])}, {ms(v['loaded_s'])}"),
        ("sidebar: poll p50 / max", f"{ms(v['poll_p50_s'])} / {ms(v['poll_max_s'])}"),
        ("load average before / after", f"{r['load_before'][0]:.1f} / {r['load_after'][0]:.1f}"),
        ("checks", f"{sum(r['checks'].values())}/{len(r['checks'])} passed"),
    ]
    print("| figure | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\nrequests by endpoint: " + ", ".join(f"{k} {c}" for k, c in q["by_path"].items()))
    print("refused (4xx): " + (", ".join(f"{k} {c}" for k, c in q["refused_4xx"].items()) or "none"))


if __name__ == "__main__":
    main()
