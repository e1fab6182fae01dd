"""Ray Tune trials measured on their workers: :func:`measure` wraps a function trainable.

Each trial runs in a worker process (an actor) that Ray starts, often on another node.  There
the wrapper joins the sweep, measures the trial as one of its child runs (named after the trial,
with its config as params and the tags ``ray.experiment``, ``ray.trial_id``,
``ray.trial_name``), leaves the sweep and waits until MLflow has the run, before Ray may end the
worker.  The trial's last result carries its energy (``energy_j``, ``energy_estimated``), and
:func:`report` adds the running ``energy_j`` to each intermediate result.

Which devices: the worker measures the sensors it finds (``IPYTHON_ENERGY_SENSORS``), and the
NVML sensor takes only the GPUs in ``CUDA_VISIBLE_DEVICES``, which Ray sets to the GPUs it
assigned the trial (``tune.with_resources(trainable, {"gpu": 1})``).  A node's GPUs that no trial
was given are measured by no one; CPU and DRAM (RAPL) are the whole node's, so trials sharing
a node each count all of it.

Workers are separate processes: they need the sweep's name (``sweep=``, else the environment's
``IPYTHON_ENERGY_SWEEP``, else Tune's experiment name) and the tracking URI
(``MLFLOW_TRACKING_URI``), for instance through ``ray.init(runtime_env={"env_vars": {...}})``.

``ray`` is imported by this module's functions only; ``import ipython_energy`` never needs it.
"""

from __future__ import annotations

import contextvars
import inspect
import math
import os
from numbers import Real
from typing import Any, Callable, Mapping

import ipython_energy as energy
from .runs import Run
from .validate import check_name, status_for

#: The environment variable that names the sweep a worker's trials join.
SWEEP_ENV = "IPYTHON_ENERGY_SWEEP"

_run: contextvars.ContextVar[Run | None] = contextvars.ContextVar("ipython_energy_ray_tune_run", default=None)


def current_run() -> Run | None:
    """The run measuring the trial this thread is running (None outside a measured trainable)."""
    return _run.get()


def report(metrics: Mapping[str, Any], **kwargs: Any) -> None:
    """``ray.tune.report(metrics, **kwargs)`` with the trial's running ``energy_j`` added."""
    from ray import tune

    run = _run.get()
    tune.report({**metrics, "energy_j": run.energy_j} if run is not None else dict(metrics), **kwargs)


def _params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A trial's config as flat MLflow params (``model/hidden``); values longer than MLflow keeps are cut."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_params(value, f"{name}/"))
        else:
            out[name] = str(value)[:6000]
    return out


def _with_energy(output: Any, energy_j: float, estimated: bool) -> dict[str, Any]:
    """The trial's last result: what the trainable returned (a dict, or a number as Tune's default
    metric) and the trial's energy."""
    figures = {"energy_j": energy_j, "energy_estimated": estimated}
    if isinstance(output, Mapping):
        return {**output, **figures}
    if isinstance(output, Real) and not isinstance(output, bool) and math.isfinite(output):
        from ray.tune.result import DEFAULT_METRIC

        return {DEFAULT_METRIC: output, **figures}
    return figures


def _trial(trainable: Callable[[dict], Any], sweep: str | None, flush_timeout_s: float, config) -> dict[str, Any]:
    """One trial on its worker: a run of the sweep around ``trainable(config)`` (see :func:`measure`)."""
    from ray import tune

    context = tune.get_context()
    name = sweep or os.environ.get(SWEEP_ENV) or context.get_experiment_name()
    tags = {"ray.experiment": context.get_experiment_name(), "ray.trial_id": context.get_trial_id(),
            "ray.trial_name": context.get_trial_name()}
    try:
        with energy.sweep(name):
            run = energy.run(context.get_trial_name(), params=_params(config))
            token = _run.set(run)
            try:
                output = trainable(config)
            except BaseException as exc:
                run.annotate(tags=tags)
                run.end(status_for(type(exc)))
                raise
            finally:
                _run.reset(token)
            run.annotate(tags=tags)
            m = run.end()
    finally:
        energy.flush(flush_timeout_s)  # before Ray may end this worker process
    return _with_energy(output, m.energy_j, m.estimated)


def measure(trainable: Callable[[dict], Any], sweep: str | None = None, *,
            flush_timeout_s: float = 120.0) -> Callable[[dict], Any]:
    """A function trainable that measures each trial as a child run of the sweep, on its worker.

    Args:
        trainable: A Tune function trainable, ``def train(config): ...``; it may call
            :func:`report` (or ``tune.report``) and return a dict or a number as usual.
        sweep: The sweep's name; default: ``IPYTHON_ENERGY_SWEEP`` in the worker's environment,
            else the name of Tune's experiment.
        flush_timeout_s: How long the worker waits at the trial's end for MLflow to have the
            run (Ray may end the worker process once the trainable returns).

    A trial that raises ends its run ``FAILED`` (``KILLED`` for KeyboardInterrupt) with its energy,
    and the exception goes on to Tune.
    """
    if not callable(trainable):
        raise TypeError(f"trainable must be a function of the trial's config, not {type(trainable).__name__}")
    if inspect.isgeneratorfunction(trainable):
        raise TypeError("generator trainables are not supported: report results with ipython_energy.ray_tune.report")
    if sweep is not None:
        sweep = check_name(sweep, "sweep")

    def measured(config):
        # Ray pickles this closure by value: it names only a module function (pickled by name),
        # never the module's ContextVar.
        return _trial(trainable, sweep, flush_timeout_s, config)

    measured.__name__ = getattr(trainable, "__name__", "trainable")
    measured.__qualname__ = getattr(trainable, "__qualname__", measured.__name__)
    measured.__doc__ = trainable.__doc__
    return measured
