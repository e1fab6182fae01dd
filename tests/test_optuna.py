"""Optuna trials measured as runs of a sweep (ipython_energy.optuna), in one process.

Hardware seam: the replay sensor (tests/faults/faultkit.py ``flat_replay``, a flat 100 W), so a
trial's energy is 100 W x its seconds.  Optuna (an in-memory study), the tracker, the writer and
an MLflow sqlite store are real, read back with the MLflow client.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import pytest

optuna = pytest.importorskip("optuna")

import ipython_energy  # noqa: E402
from ipython_energy.optuna import measure, study_energy_j  # noqa: E402
from tests.helpers.mlflow_readback import assert_sweep_total_exact, runs, split_sweep  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def quadratic(trial):
    """A cheap objective whose trials last a measurable while (sleeps)."""
    x = trial.suggest_float("x", -2.0, 2.0)
    layers = trial.suggest_int("layers", 1, 3)
    time.sleep(0.05 * layers)
    return (x - 1.0) ** 2 + layers


def mlflow_trials(uri, sweep):
    """``(client, parent, {trial number: child run})`` for the sweep ``sweep``."""
    client, found = runs(uri)
    sweeps, children = split_sweep(found)
    (parent,) = [s for s in sweeps if s.data.tags["energy.sweep"] == sweep]
    mine = [c for c in children if c.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    by_number = {int(c.data.tags["optuna.trial_number"]): c for c in mine}
    assert len(by_number) == len(mine), "one run per trial"
    return client, parent, by_number


def test_each_trial_is_a_child_run_with_its_params_number_value_and_energy(tracker, sqlite_uri):
    study = optuna.create_study(study_name="quad")
    with measure(quadratic) as objective:
        study.optimize(objective, n_trials=4)
    assert ipython_energy.flush(120)

    client, parent, by_number = mlflow_trials(sqlite_uri, "quad")  # the sweep is named after the study
    assert sorted(by_number) == [t.number for t in study.trials] == [0, 1, 2, 3]
    for trial in study.trials:
        run = by_number[trial.number]
        assert run.info.run_name == f"trial {trial.number}"
        assert run.info.status == "FINISHED"
        assert run.data.params == {k: str(v) for k, v in trial.params.items()}
        assert run.data.tags["optuna.study"] == "quad" and run.data.tags["optuna.state"] == "COMPLETE"
        assert run.data.metrics["optuna_value"] == trial.value
        # The same joules in Optuna's storage as in MLflow, and the link between the two.
        assert trial.user_attrs["energy_j"] == run.data.metrics["energy_j"]
        assert trial.user_attrs["energy_uid"] == run.data.tags["energy.uid"]
        assert trial.user_attrs["energy_estimated"] is False
        # 100 W over the trial's window, which holds the objective's sleeps.
        assert run.data.metrics["energy_j"] >= 100.0 * 0.05 * trial.params["layers"] * 0.95
    assert study_energy_j(study) == math.fsum(r.data.metrics["energy_j"] for r in by_number.values())
    assert_sweep_total_exact(client, parent, list(by_number.values()))
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"  # the objective left the sweep


def test_pruned_and_failed_trials_end_killed_and_failed_with_their_energy(tracker, sqlite_uri):
    def objective(trial):
        x = trial.suggest_int("x", 0, 10)
        time.sleep(0.05)
        if trial.number == 1:
            raise optuna.TrialPruned()
        if trial.number == 2:
            raise RuntimeError("diverged")
        if trial.number == 3:
            return float("nan")  # Optuna fails a trial whose value is not a number
        return x

    study = optuna.create_study(study_name="rough")
    with measure(objective, sweep="rough sweep") as measured:
        study.optimize(measured, n_trials=4, catch=(RuntimeError,))
    assert ipython_energy.flush(120)

    client, parent, by_number = mlflow_trials(sqlite_uri, "rough sweep")
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "COMPLETE", 1: "PRUNED", 2: "FAIL", 3: "FAIL"}
    for trial in study.trials:
        run = by_number[trial.number]
        assert run.data.tags["optuna.state"] == states[trial.number]
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[states[trial.number]]
        assert run.data.params == {"x": str(trial.params["x"])}
        assert trial.user_attrs["energy_j"] == run.data.metrics["energy_j"] >= 100.0 * 0.05 * 0.95
        assert ("optuna_value" in run.data.metrics) == (trial.number == 0)
    assert_sweep_total_exact(client, parent, list(by_number.values()))


def test_units_declared_by_the_trial_give_joules_per_unit(tracker, sqlite_uri):
    def objective(trial):
        batch = trial.suggest_categorical("batch", [32, 64])
        time.sleep(0.05)
        trial.set_user_attr("samples", batch * 10)
        return batch

    study = optuna.create_study(study_name="units")
    with measure(objective, unit="samples") as measured:
        study.optimize(measured, n_trials=2)
    assert ipython_energy.flush(120)
    _client, _parent, by_number = mlflow_trials(sqlite_uri, "units")
    for trial in study.trials:
        metrics = by_number[trial.number].data.metrics
        assert metrics["units_samples"] == trial.params["batch"] * 10
        assert trial.user_attrs["energy_per_samples_j"] == metrics["energy_per_samples_j"] \
            == pytest.approx(metrics["energy_j"] / (trial.params["batch"] * 10))


def test_budget_stops_the_study_within_one_trial(tracker, sqlite_uri):
    """Each trial draws about 100 W x 0.1 s = 10 J; a 25 J budget is passed at the third trial."""
    def objective(trial):
        time.sleep(0.1)
        return trial.suggest_float("x", 0, 1)

    study = optuna.create_study(study_name="budget")
    with measure(objective, budget_j=25.0) as measured:
        study.optimize(measured, n_trials=50)
    spent = [t.user_attrs["energy_j"] for t in study.trials]
    # It stopped at the first trial that took the total past the budget, not before, not later.
    assert math.fsum(spent) >= 25.0 > math.fsum(spent[:-1])
    assert 2 <= len(spent) < 50
    assert ipython_energy.flush(120)
    client, parent, by_number = mlflow_trials(sqlite_uri, "budget")
    assert len(by_number) == len(spent)
    assert parent.data.metrics["sweep_budget_j"] == 25.0


def test_energy_as_a_second_objective(tracker, sqlite_uri):
    """The documented multi-objective pattern: value vs joules, both minimised."""
    def objective(trial):
        work = trial.suggest_int("work", 1, 4)
        time.sleep(0.03 * work)
        return 1.0 / work  # more work, better value, more joules

    study = optuna.create_study(study_name="pareto", directions=["minimize", "minimize"])
    with measure(objective, objectives="value+energy") as measured:
        study.optimize(measured, n_trials=5)
    assert ipython_energy.flush(120)
    _client, _parent, by_number = mlflow_trials(sqlite_uri, "pareto")
    for trial in study.trials:
        run = by_number[trial.number]
        value, joules = trial.values
        assert value == 1.0 / trial.params["work"]
        assert joules == trial.user_attrs["energy_j"] == run.data.metrics["energy_j"]
        assert run.data.metrics["optuna_value"] == value
    assert study.best_trials  # a Pareto front over (value, joules)


def test_threads_n_jobs_2_each_trial_its_own_run(tracker, sqlite_uri):
    """``study.optimize(..., n_jobs=2)``: two trials at a time in two threads of one process, each
    its own child run with its own params, and never the other thread's."""
    seen = set()
    lock = threading.Lock()

    def objective(trial):
        x = trial.suggest_int("x", 0, 1000)
        with lock:
            seen.add(threading.get_ident())
        time.sleep(0.15)
        return x

    study = optuna.create_study(study_name="threads")
    with measure(objective) as measured:
        study.optimize(measured, n_trials=6, n_jobs=2)
    assert len(seen) == 2, "the trials ran in two threads"
    assert ipython_energy.flush(120)
    client, parent, by_number = mlflow_trials(sqlite_uri, "threads")
    assert sorted(by_number) == list(range(6))
    for trial in study.trials:
        run = by_number[trial.number]
        assert run.data.params == {"x": str(trial.params["x"])}
        assert run.data.metrics["optuna_value"] == trial.value
        assert trial.user_attrs["energy_j"] == run.data.metrics["energy_j"] >= 100.0 * 0.15 * 0.95
    assert sorted(int(r.data.tags["energy.run_index"]) for r in by_number.values()) == list(range(1, 7))
    assert_sweep_total_exact(client, parent, list(by_number.values()))


def test_bad_arguments_are_refused_before_any_trial():
    with pytest.raises(ValueError, match="objectives"):
        measure(quadratic, objectives="energy")
    with pytest.raises(ValueError, match="budget_j"):
        measure(quadratic, budget_j=-1)
    with pytest.raises(TypeError, match="callable"):
        measure("quadratic")


# ---------------------------------------------------------------------------------------------
# Worker processes on several hosts: one Optuna study on PostgreSQL, one mlflow server on PostgreSQL
# ---------------------------------------------------------------------------------------------
WORKER = textwrap.dedent("""
    import os, socket, sys, time
    import optuna
    import ipython_energy as energy
    from ipython_energy.optuna import measure

    storage, study_name, n_trials, trial_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    budget_j = float(sys.argv[5]) if len(sys.argv) > 5 else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage)

    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        # a mark the test waits for: this host is inside trial N now
        open(os.path.join(os.environ["MARKS"], f"{socket.gethostname()}-{trial.number}"), "w").close()
        time.sleep(trial_s)
        return x

    with measure(objective, budget_j=budget_j) as measured:
        study.optimize(measured, n_trials=n_trials)
    assert energy.flush(600), "flush timed out"
    print("DONE", socket.gethostname(), flush=True)
""")

#: The next process on a host: loading the package there closes the runs of its dead processes.
RECOVER = textwrap.dedent("""
    import ipython_energy as energy
    assert energy.tracker().writer.recover_now(240), "recovery pass timed out"
    assert energy.flush(240), "flush timed out"
""")


def unshare_missing() -> str | None:
    """Why a process with a hostname of its own cannot be started here, or None."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare(1) to give each worker a hostname of its own (unshare --uts)"
    done = subprocess.run(["unshare", "--uts", "true"], capture_output=True, text=True)
    return None if done.returncode == 0 else f"unshare --uts fails here: {done.stderr.strip()}"


class Hosts:
    """Worker processes, each with a hostname (``unshare --uts``) and an IPYTHON_ENERGY_HOME of its
    own, as on separate machines; the replay sensor (120 W flat) stands in for each host's hardware."""

    def __init__(self, tmp_path, trace, tracking_uri):
        self.tmp_path = tmp_path
        self.marks = tmp_path / "marks"
        self.marks.mkdir()
        self.env = dict(os.environ)
        for key in list(self.env):
            if key.startswith("IPYTHON_ENERGY_"):
                del self.env[key]
        self.env.update({"IPYTHON_ENERGY_SENSORS": f"replay:{trace}", "MLFLOW_TRACKING_URI": tracking_uri,
                         "MARKS": str(self.marks), "PYTHONPATH": os.pathsep.join(sys.path),
                         "MLFLOW_DISABLE_TELEMETRY": "true"})
        self.procs: list[subprocess.Popen] = []

    def start(self, host: str, script: str, *args) -> subprocess.Popen:
        path = self.tmp_path / f"{host}-{len(self.procs)}.py"
        path.write_text(script)
        env = dict(self.env, IPYTHON_ENERGY_HOME=str(self.tmp_path / f"home-{host}"))
        log = open(self.tmp_path / f"{path.stem}.log", "w")
        proc = subprocess.Popen(["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$0" "$@"',
                                 sys.executable, str(path), *map(str, args)],
                                env=env, cwd=self.tmp_path, stdout=log, stderr=subprocess.STDOUT)
        proc.log = path.with_suffix(".log")
        self.procs.append(proc)
        return proc

    def wait(self, proc, timeout_s: float = 900.0) -> str:
        proc.wait(timeout_s)
        out = proc.log.read_text()
        assert proc.returncode == 0, out[-3000:]
        return out

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def hosts(tmp_path, flat_trace, mlflow_server_pg, energy_home):
    reason = unshare_missing()
    if reason is not None:
        pytest.skip(reason)
    made = Hosts(tmp_path, flat_trace, mlflow_server_pg.uri)
    yield made
    made.close()


def new_study(postgres, name: str, **kw) -> tuple[str, "optuna.study.Study"]:
    """An Optuna study on a fresh PostgreSQL database: ``(storage URL, study)``."""
    storage = postgres.new_database()
    return storage, optuna.create_study(study_name=name, storage=storage, **kw)


def check_ledger(uri: str, sweep: str, study) -> tuple:
    """What must hold for a study measured on many hosts, read back from MLflow and the study:
    every finished trial exactly once as a child with its energy, equal to the trial's
    ``energy_j`` user attribute; one parent run; unique run numbers; the sweep's runs energy the
    sum of its children's.  Returns ``(client, parent, {trial number: child run})``.

    The trials are checked first, the sweep's ledger (one parent, its numbers and totals) last, so
    that a failure of the one does not hide the state of the other."""
    client, found = runs(uri)
    sweeps, children = split_sweep(found)
    assert {s.data.tags["energy.sweep"] for s in sweeps} == {sweep}
    numbers = [int(c.data.tags["optuna.trial_number"]) for c in children if "optuna.trial_number" in c.data.tags]
    assert len(numbers) == len(set(numbers)), f"a trial logged twice: {sorted(numbers)}"
    by_number = {int(c.data.tags["optuna.trial_number"]): c for c in children if "optuna.trial_number" in c.data.tags}
    finished = [t for t in study.get_trials() if t.state.is_finished()]
    assert sorted(by_number) == sorted(t.number for t in finished)
    for trial in finished:
        assert trial.user_attrs["energy_j"] == by_number[trial.number].data.metrics["energy_j"]
    assert len(sweeps) == 1, f"one parent run for the study, not {len(sweeps)}"
    parent = client.get_run(sweeps[0].info.run_id)
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    indices = [c.data.tags.get("energy.run_index") for c in children]
    assert len(set(indices)) == len(indices), f"run numbers repeated: {sorted(indices)}"
    assert parent.data.metrics["sweep_runs_energy_j"] == pytest.approx(
        math.fsum(c.data.metrics["energy_j"] for c in children), rel=1e-9)
    return client, parent, by_number


def check_trial_runs(uri: str, hosts: set[str], seconds: float) -> list:
    """The finished trials' runs: FINISHED, on ``hosts``, each with at least 120 W x ``seconds``."""
    _client, found = runs(uri)
    done = [r for r in split_sweep(found)[1] if r.info.status == "FINISHED"]
    assert {r.data.tags["energy.host"] for r in done} == hosts
    for run in done:
        assert run.data.tags["optuna.state"] == "COMPLETE"
        assert run.data.metrics["energy_j"] >= 120.0 * seconds * 0.95  # 120 W over at least the trial's sleep
    return done


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(1800)
def test_three_hosts_one_study_one_sweep(hosts, postgres, mlflow_server_pg):
    """Issue 14, done-when 1: three worker processes with their own hostnames and homes run trials
    of one study on PostgreSQL storage against one mlflow server on PostgreSQL, concurrently."""
    storage, study = new_study(postgres, "hosts")
    workers = [hosts.start(f"w{i}", WORKER, storage, "hosts", 4, 0.3) for i in (1, 2, 3)]
    for proc in workers:
        assert "DONE" in hosts.wait(proc)
    study = optuna.load_study(study_name="hosts", storage=storage)
    assert len(study.trials) == 12 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len(check_trial_runs(mlflow_server_pg.uri, {"w1", "w2", "w3"}, 0.3)) == 12
    client, parent, by_number = check_ledger(mlflow_server_pg.uri, "hosts", study)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"  # the last worker to leave closed it


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(1800)
def test_a_worker_killed_mid_trial_the_others_finish(hosts, postgres, mlflow_server_pg):
    """Issue 14, done-when 2: SIGKILL one worker inside a trial; the other two finish the study's
    other trials; the next process on the killed worker's host closes its run as KILLED."""
    storage, study = new_study(postgres, "killed")
    victim = hosts.start("w3", WORKER, storage, "killed", 3, 600.0)  # a trial that only a kill ends
    deadline = time.monotonic() + 300
    while not list(hosts.marks.glob("w3-*")):
        assert victim.poll() is None and time.monotonic() < deadline, victim.log.read_text()[-3000:]
        time.sleep(0.2)
    others = [hosts.start(f"w{i}", WORKER, storage, "killed", 3, 0.3) for i in (1, 2)]
    time.sleep(3.0)  # the killed run's live energy reaches MLflow every 2 s
    victim.kill()  # SIGKILL: no atexit, no flush
    victim.wait(10)
    for proc in others:
        assert "DONE" in hosts.wait(proc)
    hosts.wait(hosts.start("w3", RECOVER))

    study = optuna.load_study(study_name="killed", storage=storage)
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE"] * 6 + ["RUNNING"]  # Optuna never hears of the killed trial's end
    _client, found = runs(mlflow_server_pg.uri)
    (killed,) = [r for r in split_sweep(found)[1] if r.data.tags.get("energy.host") == "w3"]
    assert killed.info.status == "KILLED" and killed.data.tags.get("energy.closed_by")
    assert killed.data.metrics["energy_j"] > 0  # the energy of its last live flush
    assert len(check_trial_runs(mlflow_server_pg.uri, {"w1", "w2"}, 0.3)) == 6
    check_ledger(mlflow_server_pg.uri, "killed", study)


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(1800)
def test_budget_stops_every_worker_within_one_trial(hosts, postgres, mlflow_server_pg):
    """Issue 14, done-when 4: a 150 J budget over three workers whose trials draw about
    120 W x 0.3 s = 36 J each: every worker stops within one trial of the study crossing it."""
    storage, study = new_study(postgres, "budget")
    workers = [hosts.start(f"w{i}", WORKER, storage, "budget", 30, 0.3, 150.0) for i in (1, 2, 3)]
    for proc in workers:
        assert "DONE" in hosts.wait(proc)
    study = optuna.load_study(study_name="budget", storage=storage)
    done = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.datetime_complete)
    assert len(done) == len(study.trials) < 90
    spent = [t.user_attrs["energy_j"] for t in done]
    crossing = next(i for i in range(len(spent)) if math.fsum(spent[:i + 1]) >= 150.0)
    # The crossing trial and at most one more per other worker: each ends the trial it is in, then stops.
    assert len(done) - crossing <= 3, [round(s, 1) for s in spent]
    _client, parent, _by_number = check_ledger(mlflow_server_pg.uri, "budget", study)
    assert parent.data.metrics["sweep_budget_j"] == 150.0
