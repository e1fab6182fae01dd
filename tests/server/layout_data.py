"""Sweeps and runs logged with the real MLflow client, exactly in the layout of docs/metrics.md.

Used by the server, browser and benchmark code to create data the way the writer does
(tags energy.kind / energy.sweep / mlflow.parentRunId / energy.run_index, the run number's
claim ``energy.index.<k>`` on the parent, metrics energy_j / live_energy_j, the parent's
sweep_* roll-up at step = finished children).  ``claims=False`` writes a sweep as versions
before the claims did (no ``energy.index.*`` params).
Also runnable as a script that logs a sweep slowly, run by run, from another process:

    python tests/server/layout_data.py URI EXPERIMENT SWEEP RUNS SECONDS_PER_RUN [J_PER_RUN]
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from ipython_energy.ledger import INDEX_PARAM

PROVENANCE_COUNTER = {
    "energy.methods": "package0=counter,dram0=counter",
    "energy.sensors": "rapl",
    "energy.estimated": "false",
    "energy.interval_s": "0.1",
    "energy.coverage": "1.000",
    "energy.gaps": "",
    "energy.short_window": "false",
    "energy.idle_source": "measured",
}
PROVENANCE_ESTIMATED = {**PROVENANCE_COUNTER, "energy.methods": "cpu=estimated", "energy.sensors": "cpu-model",
                        "energy.estimated": "true"}


def _ms() -> int:
    return int(time.time() * 1000)


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


@dataclass
class SweepLog:
    client: MlflowClient
    experiment_id: str
    name: str
    planned: int | None = None
    budget_j: float | None = None
    run_id: str = ""
    children: list[str] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)
    claims: bool = True

    @classmethod
    def start(cls, client: MlflowClient, exp_id: str, name: str, *, planned: int | None = None,
              budget_j: float | None = None, start_ms: int | None = None, claims: bool = True) -> "SweepLog":
        tags = {"energy.kind": "sweep", "energy.uid": uuid.uuid4().hex, "energy.sweep": name,
                "energy.host": "test-host"}
        if planned is not None:
            tags["energy.planned"] = str(planned)
        if budget_j is not None:
            tags["energy.budget_j"] = repr(float(budget_j))
            tags["energy.budget_state"] = "ok"
        run = client.create_run(exp_id, start_time=start_ms or _ms(), tags=tags, run_name=name)
        log = cls(client, exp_id, name, planned, budget_j, run.info.run_id, claims=claims)
        if budget_j is not None:
            client.log_batch(log.run_id, metrics=[Metric("sweep_budget_j", float(budget_j), _ms(), 0)])
        return log

    def start_run(self, name: str, params: Mapping[str, Any] | None = None, *,
                  start_ms: int | None = None, tags: Mapping[str, str] | None = None) -> str:
        tags = {"energy.kind": "run", "energy.uid": uuid.uuid4().hex, "energy.sweep": self.name,
                "mlflow.parentRunId": self.run_id, "energy.run_index": str(len(self.children) + 1), **(tags or {})}
        run = self.client.create_run(self.experiment_id, start_time=start_ms or _ms(), tags=tags, run_name=name)
        if self.claims:  # after the run exists, as the writer claims it
            self.client.log_param(self.run_id, f"{INDEX_PARAM}{len(self.children) + 1}", run.info.run_id)
        if params:
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self.children.append(run.info.run_id)
        return run.info.run_id

    def live(self, run_id: str, energy_j: float, power_w: float, elapsed_s: int) -> None:
        now = _ms()
        self.client.log_batch(run_id, metrics=[Metric("live_energy_j", energy_j, now, elapsed_s),
                                               Metric("live_power_w", power_w, now, elapsed_s)])

    def end_run(self, run_id: str, energy_j: float, duration_s: float, status: str = "FINISHED", *,
                estimated: bool = False, end_ms: int | None = None, low_util_j: float | None = None,
                low_util_threshold: float = 30.0) -> None:
        now = end_ms or _ms()
        metrics = {"energy_j": energy_j, "duration_s": duration_s, "power_mean_w": energy_j / max(duration_s, 1e-9),
                   "power_peak_w": 1.3 * energy_j / max(duration_s, 1e-9), "energy_idle_j": 0.1 * energy_j,
                   "energy_net_j": 0.9 * energy_j}
        if estimated:
            metrics["energy_cpu_j"] = energy_j
        else:
            metrics["energy_package0_j"] = 0.8 * energy_j
            metrics["energy_dram0_j"] = 0.2 * energy_j
        tags = PROVENANCE_ESTIMATED if estimated else PROVENANCE_COUNTER
        if low_util_j is not None:  # a domain that reports utilisation (docs/metrics.md)
            metrics["energy_low_util_j"] = low_util_j
            metrics["energy_package0_low_util_j"] = low_util_j
            tags = {**tags, "energy.low_util_threshold": f"{low_util_threshold:g}"}
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, status=status, end_time=now)
        self.finished.append(energy_j)
        self._roll_up()

    def _roll_up(self) -> None:
        n, total = len(self.finished), sum(self.finished)
        now = _ms()
        rows = [Metric("sweep_energy_j", total, now, n), Metric("sweep_runs", n, now, n),
                Metric("sweep_mean_energy_per_run_j", total / n, now, n)]
        tags = []
        if self.planned:
            rows.append(Metric("sweep_forecast_energy_j", total / n * max(self.planned, n), now, n))
        if self.budget_j is not None:
            tags.append(RunTag("energy.budget_state", "over" if total > self.budget_j else "ok"))
        self.client.log_batch(self.run_id, metrics=rows, tags=tags)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def log_sweep(client: MlflowClient, exp_id: str, name: str, energies: list[float], *,
              statuses: list[str] | None = None, params: list[dict] | None = None, planned: int | None = None,
              budget_j: float | None = None, run_names: list[str] | None = None, estimated: bool = False,
              end: bool = True, low_util: list[float | None] | None = None) -> SweepLog:
    """A whole sweep at once: one child per energy, ended with the given statuses."""
    sweep = SweepLog.start(client, exp_id, name, planned=planned, budget_j=budget_j)
    for i, energy in enumerate(energies):
        rid = sweep.start_run(run_names[i] if run_names else f"{name}-{i + 1}",
                              params[i] if params else {"i": i})
        sweep.end_run(rid, energy, duration_s=energy / 50.0, status=(statuses or ["FINISHED"] * len(energies))[i],
                      estimated=estimated, low_util_j=low_util[i] if low_util else None)
    if end:
        sweep.end()
    return sweep


def bulk_sweep(client: MlflowClient, exp_id: str, name: str, runs: int, *, hosts: int = 1,
               processes_per_host: int = 1, planned: int | None = None, running_last: bool = True,
               start_ms: int | None = None, claims: bool = True) -> SweepLog:
    """A sweep of ``runs`` children written in one transaction straight into a SQL store.

    The rows are those MLflow's own ``SqlAlchemyStore`` writes (runs, tags, params, metrics,
    latest_metrics), in the layout above, so every reader sees real MLflow runs; one
    transaction makes 10,000 runs take seconds instead of the ~15 minutes that four client
    calls per run take.  Runs are spread round-robin over ``hosts`` hosts (``energy.host``
    ``host-<h>``) and ``processes_per_host`` sessions on each (``energy.session``).  The last
    run stays RUNNING when ``running_last``.  Returns the sweep's :class:`SweepLog` (children in
    order; more runs can be logged through it as usual).  ``claims``: each run's number claimed
    on the parent (``energy.index.<k>``), as the writer does.
    """
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

    store = client._tracking_client.store
    t0 = start_ms or _ms() - runs * 1000
    sweep = SweepLog.start(client, exp_id, name, planned=planned, start_ms=t0, claims=claims)
    children, finished = [], []
    rows: dict[Any, list[dict[str, Any]]] = {SqlRun: [], SqlTag: [], SqlParam: [], SqlMetric: [], SqlLatestMetric: []}
    for i in range(runs):
        rid = uuid.uuid4().hex
        host, proc = i % hosts, (i // hosts) % processes_per_host
        running = running_last and i == runs - 1
        start, end = t0 + i * 1000 + 1, t0 + i * 1000 + 900
        energy = 100.0 + (i % 17) + 5.0 * host
        rows[SqlRun].append(dict(run_uuid=rid, name=f"run-{i + 1}", source_type="LOCAL", source_name="",
                                 entry_point_name="", user_id="bench", status="RUNNING" if running else "FINISHED",
                                 start_time=start, end_time=None if running else end, source_version="",
                                 lifecycle_stage="active", artifact_uri="", experiment_id=int(exp_id)))
        tags = {"energy.kind": "run", "energy.uid": uuid.uuid4().hex, "energy.sweep": name,
                "mlflow.parentRunId": sweep.run_id, "energy.run_index": str(i + 1), "mlflow.runName": f"run-{i + 1}",
                "energy.host": f"host-{host}", "energy.session": f"session-{host}-{proc}"}
        if not running:
            tags.update(PROVENANCE_COUNTER)
        rows[SqlTag] += [dict(key=k, value=v, run_uuid=rid) for k, v in tags.items()]
        rows[SqlParam] += [dict(key=k, value=str(v), run_uuid=rid)
                           for k, v in {"lr": 10 ** -(i % 5), "depth": i % 7, "seed": i}.items()]
        metrics = {"live_energy_j": 1.0} if running else {
            "energy_j": energy, "duration_s": 2.0, "power_mean_w": energy / 2.0, "energy_idle_j": 0.1 * energy}
        for table in (SqlMetric, SqlLatestMetric):
            rows[table] += [dict(key=k, value=v, timestamp=end, step=0, is_nan=False, run_uuid=rid)
                            for k, v in metrics.items()]
        if claims:
            rows[SqlParam].append(dict(key=f"{INDEX_PARAM}{i + 1}", value=rid, run_uuid=sweep.run_id))
        children.append(rid)
        if not running:
            finished.append(energy)
    with store.ManagedSessionMaker() as session:
        for table, values in rows.items():  # runs first: the others refer to them
            session.execute(table.__table__.insert(), values)
    sweep.children, sweep.finished = children, finished
    if finished:
        sweep._roll_up()
    return sweep


def log_repeat_sweep(client: MlflowClient, exp_id: str, name: str, groups: list[list[float]], *,
                     warmups: list[float] | None = None) -> SweepLog:
    """A sweep whose configurations ran with repeats: per group, its parent run (``energy.kind``
    ``group``, a child of the sweep but no run of it, with the group's mean, sd and n), then the
    group's warm-up (``warmups[g]``, tag ``energy.warmup``) and its measured repeats, each a run of
    the sweep tagged ``energy.group`` / ``energy.group_uid`` / ``energy.repeat``."""
    sweep = SweepLog.start(client, exp_id, name)
    for g, energies in enumerate(groups):
        group_name = f"{name}-cfg{g}"
        group_uid = uuid.uuid4().hex
        parent = client.create_run(exp_id, run_name=group_name, tags={
            "energy.kind": "group", "energy.uid": group_uid, "energy.group": group_name,
            "mlflow.parentRunId": sweep.run_id})
        uid = parent.info.run_id
        group_tags = {"energy.group": group_name, "energy.group_uid": group_uid}
        if warmups is not None:
            rid = sweep.start_run(f"{group_name}-warmup", {"cfg": g}, tags={**group_tags, "energy.warmup": "true"})
            sweep.end_run(rid, warmups[g], duration_s=warmups[g] / 50.0)
        for i, energy in enumerate(energies):
            rid = sweep.start_run(f"{group_name}-r{i}", {"cfg": g}, tags={**group_tags, "energy.repeat": str(i)})
            sweep.end_run(rid, energy, duration_s=energy / 50.0)
        mean = sum(energies) / len(energies)
        sd = (sum((e - mean) ** 2 for e in energies) / max(len(energies) - 1, 1)) ** 0.5
        now = _ms()
        client.log_batch(uid, metrics=[Metric("group_mean_j", mean, now, 0), Metric("group_sd_j", sd, now, 0),
                                       Metric("group_n", len(energies), now, 0)])
        client.set_terminated(uid)
    sweep.end()
    return sweep


def main(argv: list[str]) -> None:
    uri, experiment, name, runs, seconds = argv[0], argv[1], argv[2], int(argv[3]), float(argv[4])
    j_per_run = float(argv[5]) if len(argv) > 5 else 400.0
    client = MlflowClient(tracking_uri=uri)
    exp_id = experiment_id(client, experiment)
    sweep = SweepLog.start(client, exp_id, name, planned=runs + 2)
    power_w = j_per_run / seconds
    for i in range(runs):
        rid = sweep.start_run(f"{name}-{i + 1}", {"lr": 10 ** -(i % 4 + 1), "depth": i % 5 + 2})
        t0 = time.time()
        while time.time() - t0 < seconds:
            time.sleep(min(0.5, seconds))
            elapsed = time.time() - t0
            sweep.live(rid, power_w * elapsed, power_w, int(elapsed))
        sweep.end_run(rid, j_per_run * (1 + 0.1 * (i % 3)), duration_s=seconds)
        print(f"run {i + 1} done", flush=True)
    sweep.end()


if __name__ == "__main__":
    main(sys.argv[1:])
