"""Which sweep and run are active where: one view per context (thread, asyncio task) of a tracker.

Concurrent trials (an Optuna search with ``n_jobs=2``, a thread pool, ``asyncio.gather``) each
need their own active run, so the active sweep, the active run and the stack of open runs live
in a :class:`~contextvars.ContextVar`, not on the tracker.  The rules:

* A context sees what it set itself: ``energy.sweep()``, ``energy.run()`` and the magics set
  them in the calling context.  An asyncio task starts with a copy of its creator's context, so
  a task made inside a run nests its runs in that run; tasks made outside any run are siblings.
* A context that never set a sweep (a new ``threading.Thread``, a worker of a
  ``ThreadPoolExecutor``, which does not copy its caller's context) sees the *home* sweep: the
  sweep last made active in the main thread (the notebook's cells, a script's main code), so
  trials in threads join the notebook's sweep.  A sweep that has ended is not seen.
* A run is seen only by the thread that opened it: a context never gets another thread's run
  as its active run or as the parent of a new run, even when it was copied from that thread
  (``contextvars.copy_context().run``).  Runs of different threads are siblings that overlap;
  the sweep's ledger flags them (``energy.shares_devices``).

In Jupyter, cells run one after another in one context, so a sweep or run made active in a
cell stays active for the next.  A cell with top-level ``await`` runs in a task of its own
(ipykernel), so what it makes active (``%energy sweep`` in such a cell) may last for that cell only,
as for any context variable: start a sweep in a cell without ``await``.

Ending a run or sweep from another context leaves a stale entry in the context that set it;
entries are checked when read (an ended run or sweep is not active), so nothing is cleaned up
across contexts.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import Any


#: Per context: ``(tracker, sweep, run, runs)``, a plain tuple (immutable, so that a context's copy
#: never changes another's; cheap to make, as every run start and end makes one).  ``sweep``: the
#: sweep this context made active (None: the home sweep); ``run``: the run made active here
#: (``%energy run``: later cells belong to it); ``runs``: runs opened here and not ended, innermost last.
_SCOPE: ContextVar[tuple | None] = ContextVar("ipython_energy_scope", default=None)
_NONE = (None, None, None, ())


def _live(sweep):
    return None if sweep is None or sweep.ended else sweep


class Scopes:
    """One tracker's active sweep and run as the calling context sees them (see the module's rules)."""

    def __init__(self, tracker: Any) -> None:
        self._tracker = tracker
        #: The sweep last made active in the main thread: what a context that set none sees.
        self.home_sweep = None

    def _own(self) -> tuple:
        """This context's ``(tracker, sweep, run, runs)`` for this tracker, or all unset."""
        scope = _SCOPE.get()
        return scope if scope is not None and scope[0] is self._tracker else _NONE

    def _set(self, sweep, run, runs: tuple) -> None:
        _SCOPE.set((self._tracker, sweep, run, runs))

    # ---- sweeps ------------------------------------------------------------------------------
    @property
    def sweep(self):
        """The active sweep here: this context's own, else the home sweep (ended ones are not active)."""
        own = _live(self._own()[1])
        return own if own is not None else _live(self.home_sweep)

    def activate_sweep(self, sweep) -> None:
        _tracker, _sweep, run, runs = self._own()
        self._set(sweep, run, runs)
        if threading.current_thread() is threading.main_thread():
            self.home_sweep = sweep

    def leave_sweep(self, sweep) -> None:
        """``sweep`` ended: this context (and the main thread, if it was the home sweep) has none."""
        _tracker, own, run, runs = self._own()
        if own is sweep:
            self._set(None, run, runs)
        if self.home_sweep is sweep:
            self.home_sweep = None

    # ---- runs --------------------------------------------------------------------------------
    @property
    def run(self):
        """The active run here (``%energy run``), if this thread opened it and it is still open."""
        run = self._own()[2]
        if run is None or run.measurement is not None or run.thread is not threading.current_thread():
            return None
        return run

    def open_runs(self) -> list:
        """The runs this thread opened in this context that are still open, innermost last."""
        runs = self._own()[3]
        if not runs:
            return []
        thread = threading.current_thread()
        return [r for r in runs if r.measurement is None and r.thread is thread]

    def parent(self):
        """The run a new run opened here nests in: the innermost open one (not superseded)."""
        return next((r for r in reversed(self.open_runs()) if not r.discarded), None)

    def opened(self, run, activate: bool) -> None:
        _tracker, sweep, active, _runs = self._own()
        self._set(sweep, run if activate else active, (*self.open_runs(), run))

    def ended(self, run) -> None:
        _tracker, sweep, active, runs = self._own()
        if active is not run and not any(r is run for r in runs):
            return
        self._set(sweep, None if active is run else active,
                  tuple(r for r in runs if r is not run and r.measurement is None))
