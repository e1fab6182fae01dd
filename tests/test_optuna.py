"""Optuna trials measured as runs of a sweep (ipython_energy.optuna), in one process.

Hardware seam: the replay sensor (tests/faults/faultkit.py ``flat_replay``, a flat 100 W), so a
trial's energy is 100 W x its seconds.  Optuna (an in-memory study), the tracker, the writer and
an MLflow sqlite store are real, read back with the MLflow client.
"""

from __future__ import annotations

import math
import threading
import time

import pytest

optuna = pytest.importorskip("optuna")

import ipython_energy  # noqa: E402
from ipython_energy.optuna import measure, study_energy_j  # noqa: E402
from ipython_energy.runtime import set_tracker  # noqa: E402
from tests.faults.faultkit import flat_replay, make_tracker  # noqa: E402
from tests.helpers.mlflow_readback import assert_sweep_total_exact, runs, split_sweep  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def tracker(energy_home, sqlite_uri):
    """The process's tracker, measuring a flat 100 W replay trace and logging to the test's store."""
    t = make_tracker([flat_replay({"gpu0": 100.0})], sqlite_uri)
    set_tracker(t)
    yield t
    t.close()
    set_tracker(None)


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
