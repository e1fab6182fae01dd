"""Recovery of dead sessions: their journals replayed into MLflow, their open runs closed.

A kernel that dies (SIGKILL, a crash, a closed laptop) leaves its journal in the spool folder
with nobody holding its lock.  The next writer on this host adopts it (one at a time, by
flock), applies every event MLflow may not have (each as *in doubt*: it may have landed before
the crash, so it is looked for first), and closes the runs that never ended as ``KILLED`` with
the energy of their last live flush, tagged ``energy.closed_by``.  The sweeps it had started or
joined it leaves as ``KILLED`` (see :meth:`MlflowStore.end_sweep <ipython_energy.store.MlflowStore.end_sweep>`:
the last member to leave closes the parent).  Every link this needs is in the journal or in MLflow:
a joined sweep's parent is found by experiment and sweep name.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .events import Metrics, RunEnd, RunStart, SweepEnd, SweepStart, from_wire
from .spool import Spool

if TYPE_CHECKING:
    from .writer import Writer

#: How often one event of a dead session is tried before its journal is left for a later pass.
ATTEMPTS = 3


def adopt_orphans(writer: "Writer", own: Spool) -> None:
    """Replay the journal of every dead session beside ``own`` (the live session's spool)."""
    directory = own.directory
    for session in Spool.sessions(directory):
        if session == own.session:
            continue
        old = Spool.adopt(directory, session)
        if old is None:
            continue
        try:
            replay(writer, old)
        finally:
            old.close(retire=old.acked >= old.last_seq)


def replay(writer: "Writer", old: Spool) -> None:
    """Apply ``old``'s un-acked events in order, then close its open runs; stop at an outage."""
    from .writer import Pending

    open_runs: dict[str, RunStart] = {}
    open_sweeps: dict[str, SweepStart] = {}
    last_live: dict[str, dict[str, float]] = {}
    for seq, wire in old.events():
        event = from_wire(wire)
        if isinstance(event, (SweepStart, RunStart)):
            writer.remember(event)
            if isinstance(event, RunStart):
                open_runs[event.uid] = event
            else:
                open_sweeps[event.uid] = event
        elif isinstance(event, RunEnd):
            open_runs.pop(event.uid, None)
        elif isinstance(event, SweepEnd):
            open_sweeps.pop(event.uid, None)
        elif isinstance(event, Metrics):
            for key, value, step, _t in event.rows:
                if key in ("live_energy_j", "live_power_w"):
                    last_live.setdefault(event.uid, {})[key] = value
                    last_live[event.uid]["step"] = step
        if seq <= old.acked:
            continue
        # Every un-acked event of a dead session may have reached MLflow (an ack can be lost to
        # a crash or a full disk): check before writing.
        if not _apply_with_retries(writer, Pending(seq, event, in_doubt=True)):
            return  # backend still down: leave the journal for a later load
        old.ack(seq)
    # Runs whose kernel died: close them as KILLED with the energy of the last live flush.
    for uid in open_runs:
        live = last_live.get(uid, {})
        now_ms = int(time.time() * 1000)
        end = RunEnd(uid, "KILLED", now_ms,
                     rows=tuple((key, live[field], 0, now_ms)
                                for key, field in (("energy_j", "live_energy_j"), ("duration_s", "step"))
                                if field in live),
                     tags={"energy.closed_by": "recovery: kernel died; energy up to the last live flush"})
        if not _close(writer, old, end):
            return
    # Sweeps it had started or joined: it leaves them (KILLED), and the last member closes the parent.
    for uid in open_sweeps:
        if not _close(writer, old, SweepEnd(uid, "KILLED", int(time.time() * 1000))):
            return


def _close(writer: "Writer", old: Spool, end) -> bool:
    """Journal ``end`` in the dead session's spool (so a failure here is replayed next time) and apply it."""
    from .writer import Pending

    seq = old.append(end.to_wire())
    if not writer.apply(Pending(seq, end, in_doubt=True)):
        return False
    old.ack(seq)
    return True


def _apply_with_retries(writer: "Writer", item) -> bool:
    for _attempt in range(ATTEMPTS):
        if writer.apply(item):
            return True
        time.sleep(0.5)
    return False
