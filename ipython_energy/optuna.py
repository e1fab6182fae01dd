"""Optuna trials measured as runs of a sweep: :func:`measure` wraps an objective for ``study.optimize``.

Each trial is one MLflow child run of the sweep (named after the study unless ``sweep=`` or the
environment's ``IPYTHON_ENERGY_SWEEP`` names it), with the trial's params as MLflow params, its
number, study and state as tags (``optuna.trial_number``, ``optuna.study``, ``optuna.state``) and
its value as the metric ``optuna_value``
(``optuna_value_<i>`` for each value of a multi-objective trial).  Its energy goes to Optuna
too, as user attributes of the trial, so that Optuna's storage and dashboard show it:
``energy_j``, ``energy_per_<unit>_j`` when the trial declared units, ``energy_estimated``, and
``energy_uid`` (the MLflow run's ``energy.uid`` tag: the link from the trial to its run).

The budget is checked against Optuna's storage, not MLflow: the sum of ``energy_j`` over the
study's trials (:func:`study_energy_j`).  Every worker writes its trial's energy there
synchronously when the trial ends, and every worker of a study reads the same storage (one
RDB for many processes and hosts), whereas MLflow is written in the background and may lag or
be unreachable.  What that sum leaves out: the time between trials, which the sweep's
``sweep_energy_j`` in MLflow includes (docs/metrics.md); what it may count twice: trials that
overlapped in threads of one process on the same devices (each trial's ``energy_j`` is the
machine's energy over its window).

``optuna`` is imported by this module only; ``import ipython_energy`` never needs it.
"""

from __future__ import annotations

import math
import os
import threading
from numbers import Real
from typing import Any, Callable

import optuna

import ipython_energy as energy
from .runs import Run, Sweep
from .validate import check_name, check_units, quote, status_for

#: The user attribute of a trial that holds its energy in joules (also the budget's figure).
ENERGY_ATTR = "energy_j"
#: What :func:`measure` can return to Optuna: the objective's value(s), or those and the energy.
OBJECTIVES = ("value", "value+energy")


def study_energy_j(study: optuna.study.Study) -> float:
    """The energy of ``study``'s trials so far, in joules: the sum of their ``energy_j`` user
    attributes, as every worker sharing the study's storage sees it (running trials count
    once they end)."""
    return math.fsum(float(t.user_attrs.get(ENERGY_ATTR, 0.0)) for t in study.get_trials(deepcopy=False))


class MeasuredObjective:
    """An objective for ``study.optimize`` that measures each trial (made by :func:`measure`).

    Callable with a trial; :meth:`end` (or leaving a ``with`` block) leaves the sweep in this
    process, which a worker script's exit also does.
    """

    def __init__(self, objective: Callable[[optuna.trial.Trial], Any], sweep: str | None,
                 budget_j: float | None, unit: str | None, objectives: str):
        self.objective = objective
        self.sweep_name = sweep
        self.budget_j = budget_j
        self.unit = unit
        self.objectives = objectives
        self._lock = threading.Lock()
        self._sweeps: dict[str, Sweep] = {}

    def __call__(self, trial: optuna.trial.Trial):
        name = self.sweep_name or os.environ.get("IPYTHON_ENERGY_SWEEP") or trial.study.study_name
        sweep = energy.sweep(name, budget_j=self.budget_j)
        with self._lock:
            self._sweeps[sweep.name] = sweep
        run = energy.run(f"trial {trial.number}")
        try:
            value = self.objective(trial)
        except optuna.TrialPruned:
            self._end(trial, run, "KILLED", "PRUNED", None)
            raise
        except BaseException as exc:
            self._end(trial, run, status_for(type(exc)), "FAIL", None)
            raise
        values = _values(value)
        state = "COMPLETE" if values is not None else "FAIL"  # Optuna fails a trial whose value is not a number
        energy_j = self._end(trial, run, "FINISHED" if values is not None else "FAILED", state, values)
        if self.budget_j is not None and study_energy_j(trial.study) >= self.budget_j:
            trial.study.stop()  # this worker's loop ends after this trial; each other worker's after its own
        if self.objectives == "value+energy":
            return (*(values if values is not None else (value,)), energy_j)
        return value

    def _end(self, trial: optuna.trial.Trial, run: Run, status: str, state: str,
             values: tuple[float, ...] | None) -> float:
        """End ``run`` with the trial's params, tags and value(s); give the trial its energy.  Returns the energy."""
        if self.unit is not None and self.unit in trial.user_attrs:
            run.add_units(trial.user_attrs[self.unit], self.unit)
        metrics = {}
        if values is not None:
            metrics = {"optuna_value": values[0]} if len(values) == 1 else \
                {f"optuna_value_{i}": v for i, v in enumerate(values)}
        run.annotate(params=trial.params, metrics=metrics, tags={
            "optuna.study": trial.study.study_name, "optuna.trial_number": trial.number, "optuna.state": state})
        m = run.end(status)
        trial.set_user_attr(ENERGY_ATTR, m.energy_j)
        trial.set_user_attr("energy_estimated", m.estimated)
        trial.set_user_attr("energy_uid", run.uid)
        for unit, n in run.units.items():
            if n > 0:
                trial.set_user_attr(f"energy_per_{unit}_j", m.energy_j / n)
        return m.energy_j

    def end(self) -> None:
        """Leave the sweep(s) this objective joined, in this process (the time after the last trial
        joins the sweep's total; the last process to leave closes the sweep's run)."""
        with self._lock:
            sweeps, self._sweeps = list(self._sweeps.values()), {}
        for sweep in sweeps:
            sweep.end()

    def __enter__(self) -> "MeasuredObjective":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end()


def _values(value: Any) -> tuple[float, ...] | None:
    """The trial's value(s) as numbers, or None when Optuna would fail the trial for them."""
    items = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not items or not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in items):
        return None
    return tuple(float(v) for v in items)


def measure(objective: Callable[[optuna.trial.Trial], Any], sweep: str | None = None,
            budget_j: float | None = None, unit: str | None = None, *,
            objectives: str = "value") -> MeasuredObjective:
    """Measure every trial of ``study.optimize(measure(objective), ...)`` as a run of a sweep.

    Args:
        objective: The Optuna objective (a function of the trial).
        sweep: The sweep's name; default: ``IPYTHON_ENERGY_SWEEP`` in the environment (a launcher
            can hand it to its workers), else the study's name.  Every process and thread that
            optimises the study with a measured objective joins this one sweep.
        budget_j: Stop the study (``study.stop()``) once its trials have used this many joules
            in all (:func:`study_energy_j`, read from Optuna's storage, so across every worker):
            each worker stops after the trial it is running.  Also the sweep's budget in MLflow.
        unit: A unit of work (``"samples"``): the objective says how many it did with
            ``trial.set_user_attr(unit, n)``; the run gets ``energy_per_<unit>_j``, and so do the
            trial's user attributes.
        objectives: ``"value"`` returns the objective's value(s) unchanged; ``"value+energy"``
            appends the trial's energy in joules, for a multi-objective study of value against
            joules (``optuna.create_study(directions=["minimize", "minimize"])``).

    Returns a :class:`MeasuredObjective`.  A pruned trial's run ends ``KILLED``, a failed one's
    ``FAILED``; both keep their energy (in MLflow and in the trial's user attributes).
    """
    if not callable(objective):
        raise TypeError(f"objective must be callable, not {type(objective).__name__}")
    if sweep is not None:
        sweep = check_name(sweep, "sweep")
    if unit is not None:
        unit = check_units(1, unit)[1]
    if budget_j is not None and (isinstance(budget_j, bool) or not isinstance(budget_j, Real)
                                 or not math.isfinite(budget_j) or budget_j <= 0):
        raise ValueError(f"budget_j must be a positive finite number of joules, not {quote(budget_j)}")
    if objectives not in OBJECTIVES:
        raise ValueError(f"objectives must be one of {', '.join(map(repr, OBJECTIVES))}, not {quote(objectives)}")
    return MeasuredObjective(objective, sweep, None if budget_j is None else float(budget_j), unit, objectives)
