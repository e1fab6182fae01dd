"""ipython-energy: the energy of every notebook cell, run and sweep, logged to MLflow.

In IPython or Jupyter::

    %load_ext ipython_energy

    %%energy --sweep grid --param lr=0.01
    model.fit(X, y)

From Python (scripts, loops inside one cell, worker processes)::

    import ipython_energy as energy

    with energy.sweep("grid", planned=12, budget_j=50e3):
        for lr in rates:
            with energy.run(params={"lr": lr}) as run:
                with energy.stage("data"):
                    ...
                run.add_units(len(X), "samples")
    energy.flush(timeout_s=30)

Importing this package is cheap: MLflow, pynvml and altair are imported only when needed.
"""

from __future__ import annotations

from typing import Any, Mapping

try:
    from ._version import __version__
except ImportError:  # a source checkout that was never built
    __version__ = "0.0.0+unknown"

__all__ = ["sweep", "run", "stage", "flush", "session", "compare", "repeat", "compare_callables", "tracker",
           "load_ipython_extension", "__version__"]


def tracker():
    """The process's :class:`~ipython_energy.tracking.Tracker` (sensors start on first use)."""
    from .runtime import get_tracker

    return get_tracker()


def sweep(name: str, planned: int | None = None, budget_j: float | None = None, *, stop_at_budget: bool = False):
    """Start (or join) sweep ``name``: an MLflow parent run whose ``sweep_energy_j`` rises as runs finish.

    Args:
        name: Sweep name; runs started while it is active become its children.  Or the MLflow run
            id of a sweep's parent run (32 hex digits): join that sweep, under its name.
        planned: Number of runs planned, for the forecast of the total.
        budget_j: Energy budget in joules; the summary warns when it is exceeded.
        stop_at_budget: Refuse to start further runs once the budget is spent
            (:class:`~ipython_energy.runs.BudgetExceeded`).

    Made active in the calling thread or asyncio task; called from the main thread, also in every
    thread that made no sweep active itself, so a thread pool's trials join it (docs/architecture.md).
    Returns a :class:`~ipython_energy.runs.Sweep`, usable as a context manager.
    """
    return tracker().start_sweep(name, planned=planned, budget_j=budget_j, stop_at_budget=stop_at_budget)


def run(name: str | None = None, params: Mapping[str, Any] | None = None):
    """Start a run (in the active sweep, if any); use it as a context manager.

    Each thread and asyncio task has its own runs: a run nests only in a run the same thread
    opened in the same context; runs of two threads are siblings (flagged where they overlap).

    The yielded :class:`~ipython_energy.runs.Run` has ``energy_j`` (running total),
    ``add_units(n, unit)`` and, once ended, ``measurement``.  An exception inside the
    ``with`` marks it FAILED (KILLED for KeyboardInterrupt) and propagates.
    """
    return tracker().start_run(name, params)


def stage(name: str):
    """Measure a part of the current run (``data``, ``forward``, ``backward``…) as ``stage_<name>_energy_j``."""
    return tracker().stage(name)


def flush(timeout_s: float = 30.0) -> bool:
    """Wait up to ``timeout_s`` until MLflow has every measurement; False if some are still spooled."""
    from .runtime import current

    tracker = current()
    return True if tracker is None else tracker.flush(timeout_s)


def session() -> dict[str, float]:
    """This process's energy since measuring started (``%load_ext``, or the first use of this package
    in a script), in three parts that add up to ``total_j``:

    * ``in_runs_j``: inside runs and measured cells (the union of their windows, each moment once);
    * ``other_cells_j``: other executing cells (IPython's ``pre_run_cell``..``post_run_cell``),
      outside every window; 0 outside IPython;
    * ``idle_j``: the rest (the kernel waiting for input; in a script, the time outside runs).

    Also ``duration_s`` and each part's time: ``in_runs_s``, ``other_cells_s``, ``idle_s``.
    A plain dict of floats (joules, seconds).
    """
    return tracker().meter.session()


def compare(a, b, *, tracking_uri: str | None = None, experiment: str | None = None):
    """Compare the energy of ``b`` with ``a`` (runs, groups of repeats or sweeps: MLflow run ids,
    names, or the handles :func:`run` and :func:`sweep` return).

    Returns a :class:`~ipython_energy.comparison.Comparison`: ``ratio`` (b over a, per run or per
    unit of work), ``ratio_ci95``, ``comparable``, ``reasons``, ``verdict`` (one sentence), and
    ``log()`` to record it in MLflow.  Call :func:`flush` first for runs that just ended.
    """
    from .comparison import compare as _compare

    return _compare(a, b, tracking_uri=tracking_uri, experiment=experiment)


def repeat(fn, n: int = 5, *, warmup: int = 0, cooldown=None, name: str | None = None,
           params: Mapping[str, Any] | None = None, units: tuple[float, str] | None = None):
    """Run ``fn()`` ``warmup`` times (measured, logged, left out of the result) then ``n`` times, each
    its own run (of the active sweep, if any), as one group of repeats named ``name`` (default:
    the function's name).

    ``cooldown``: None, a duration (``30``, ``"30s"``) waited before each run, or ``"auto"``: wait
    until every GPU is within ``cooldown_margin_c`` of the session's idle temperature (without
    GPUs, until the power is back near the idle baseline), at most ``cooldown_max_s``.
    ``units``: ``(n, unit)`` of work each run does, for energy per unit.

    Returns a :class:`~ipython_energy.repeats.Group`: ``measurements``, ``mean``, ``sd``, ``cv``,
    ``ci95`` (a t interval of the mean), and a one-line summary as its ``str``.
    """
    from .repeats import repeat as _repeat

    return _repeat(fn, n, warmup=warmup, cooldown=cooldown, name=name, params=params, units=units)


def compare_callables(fns, repeats: int = 5, *, order: str = "interleaved", warmup: int = 0, cooldown=None,
                      seed: int | None = None, params: Mapping[str, Any] | None = None):
    """A/B: run ``fns`` (``{"a": fa, "b": fb}``) ``repeats`` times each, in ``order``
    (``interleaved`` a b a b…, the default; ``shuffled``, each round in a random order from
    ``seed``; ``blocked`` a a … b b …), after ``warmup`` warm-ups each, with ``cooldown`` as in
    :func:`repeat`.  Each callable's repeats are one group.

    Returns the :class:`~ipython_energy.comparison.Comparison` of b with a, read back from MLflow.
    """
    from .repeats import compare_callables as _compare_callables

    return _compare_callables(fns, repeats, order=order, warmup=warmup, cooldown=cooldown, seed=seed, params=params)


def load_ipython_extension(ip) -> None:
    """``%load_ext ipython_energy``."""
    from .magics import load

    load(ip)


def unload_ipython_extension(ip) -> None:
    """``%unload_ext ipython_energy``: autolog off, open runs closed (KILLED), measurements flushed."""
    from .runtime import current, set_tracker

    magics = ip.magics_manager.registry.get("EnergyMagics")
    if magics is not None:
        magics.set_autolog(False)
        magics.set_session_hooks(False)
    tracker = current()
    if tracker is not None:
        tracker.close()
        set_tracker(None)


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "ipython-energy"}]


def _jupyter_server_extension_points():
    return [{"module": "ipython_energy.server"}]
