"""Recovery of dead sessions: their journals replayed into MLflow, their open runs closed.

A kernel that dies (SIGKILL, a crash, a closed laptop) leaves its journal in the spool folder
with nobody holding its lock.  The next writer on this host adopts it (one at a time, by
flock), applies every event MLflow may not have (each as *in doubt*: it may have landed before
the crash, so it is looked for first), and closes the runs that never ended as ``KILLED`` with
the energy of their last live flush, tagged ``energy.closed_by``.  The sweeps it had started or
joined it leaves as ``KILLED`` (see :meth:`MlflowStore.end_sweep <ipython_energy.store.MlflowStore.end_sweep>`:
the last member to leave closes the parent).  Every link this needs is in the journal or in MLflow:
a joined sweep's parent is found by experiment and sweep name.

Every line is checked (:func:`~ipython_energy.events.from_wire`) before it is applied.  A line
that cannot be read, or holds no valid event, is skipped (the lines after it are replayed), noted
to the user once with the file and line, and kept in ``spool/rejected/<session>.jsonl`` when the
journal is done.  The ``.held`` count of a session whose disk was full is reported as a loss.

An old journal whose MLflow does not answer stays for a later pass (every 30 s) and is noted
once; it never changes this session's backend state (that describes this session's MLflow only).
``%energy spool deliver`` re-targets such a journal to the current store (:func:`retarget`),
``%energy spool discard`` sets it aside (:func:`discard`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .events import Event, InvalidEvent, Metrics, RunEnd, RunStart, SweepEnd, SweepStart, from_wire
from .measurement import format_energy
from .spool import Line, Spool
from .transport import describe_error, is_rejection

if TYPE_CHECKING:
    from .writer import Pending, Writer

#: How often one event of a dead session is tried before its journal is left for a later pass.
ATTEMPTS = 3


class Journal(NamedTuple):
    """What a journal holds that MLflow may not have yet (``%energy spool``, ``%energy``, notes)."""

    session: str
    path: Path
    uris: tuple[str, ...]
    experiments: tuple[str, ...]
    events: int  # un-acknowledged valid events
    runs: int  # runs with an un-acknowledged start or end
    energy_j: float  # in the un-acknowledged run ends
    skipped: int  # lines that cannot be replayed
    lost: dict | None  # the dead session's ``.held`` record, when it held events in memory only

    def describe(self) -> str:
        where = ", ".join(f"{u} (experiment {e!r})" for u, e in zip(self.uris, self.experiments)) or "no MLflow named"
        text = f"{self.events} event(s), {self.runs} run(s), {format_energy(self.energy_j)} for {where}"
        if self.skipped:
            text += f"; {self.skipped} unreadable line(s)"
        if self.lost and self.lost.get("events"):
            text += f"; {_lost_text(self.lost)} lost before they could be journalled"
        return text


def _lost_text(held: dict) -> str:
    return f"{held['events']} event(s) ({held['runs']} run(s), {format_energy(float(held['energy_j']))})"


def _parse(line: Line) -> tuple[Event | None, str | None]:
    if line.event is None:
        return None, line.error
    try:
        return from_wire(line.event), None
    except InvalidEvent as exc:
        return None, f"InvalidEvent: {exc}"


def summarize(spool: Spool) -> Journal:
    """What ``spool`` holds that MLflow may not have yet (read only; no lock needed)."""
    starts: dict[str, Event] = {}
    pending_uids: list[str] = []
    events = skipped = 0
    runs: set[str] = set()
    energy = 0.0
    for line in spool.lines():
        event, error = _parse(line)
        if event is None:
            skipped += 1
            continue
        if isinstance(event, (SweepStart, RunStart)):
            starts[event.uid] = event
        if line.seq <= spool.acked:
            continue
        events += 1
        pending_uids.append(event.uid)
        if isinstance(event, (RunStart, RunEnd)):
            runs.add(event.uid)
        if isinstance(event, RunEnd):
            energy += event.energy_j() or 0.0
    places: list[tuple[str, str]] = []
    for uid in dict.fromkeys(pending_uids):
        start = starts.get(uid)
        if start is not None and (start.tracking_uri, start.experiment) not in places:
            places.append((start.tracking_uri, start.experiment))
    held = spool.held()
    return Journal(spool.session, spool.path, tuple(p[0] for p in places), tuple(p[1] for p in places),
                   events, len(runs), energy, skipped, held if held and held.get("events") else None)


def journals(directory: Path, own: str | None) -> list[tuple[Journal, bool]]:
    """Every other session's journal in ``directory``: (what it holds, whether a live process holds it)."""
    out = []
    for session in Spool.sessions(directory):
        if session == own:
            continue
        view = Spool(directory, session, None)  # reads only; takes no lock
        out.append((summarize(view), Spool.held_by_a_live_process(directory, session)))
    return out


def adopt_orphans(writer: "Writer", own: Spool) -> None:
    """Replay the journal of every dead session beside ``own`` (the live session's spool)."""
    directory = own.directory
    for session in Spool.sessions(directory):
        if session == own.session:
            continue
        old = Spool.adopt(directory, session)
        if old is None:
            continue
        writer.replaying = session
        done = False
        try:
            done = replay(writer, old)
        except Exception as exc:  # noqa: BLE001 - one bad journal must not keep the others from MLflow
            writer.notice(("replay", session, repr(exc)),
                          f"ipython-energy: could not replay the journal {old.path}: {exc!r}; it is kept")
        finally:
            writer.replaying = None
            if done:
                writer.old_waiting.pop(session, None)
                _keep_what_was_not_replayed(old)
            old.close(retire=done and old.acked >= old.last_seq)


def replay(writer: "Writer", old: Spool) -> bool:
    """Apply ``old``'s un-acked events in order, then close its open runs; stop at an outage.

    True when MLflow has everything the journal holds (it may then be retired).
    """
    from .writer import Pending

    held = old.held()
    if held and held.get("events"):
        writer.notice(("lost", old.session),
                      f"ipython-energy: session {old.session} lost {_lost_text(held)} that could not be journalled "
                      "(its disk was full) and never reached MLflow before its kernel ended.")
    open_runs: dict[str, RunStart] = {}
    open_sweeps: dict[str, SweepStart] = {}
    last_live: dict[str, dict[str, float]] = {}
    skipped: list[Line] = []
    probed: set[str] = set()
    try:
        for line in old.lines():
            event, error = _parse(line)
            if event is None:
                skipped.append(line._replace(error=error))
                if line.seq is not None and line.seq == old.acked + 1:
                    old.ack(line.seq)  # nothing to apply: it must not keep the journal from retiring
                continue
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
            if line.seq <= old.acked:
                continue
            if not writer.knows(event.uid):
                # Its start line was skipped: MLflow has no run to put it in.
                skipped.append(line._replace(error=f"{event.type} of {event.uid}, whose start line could not be read"))
                old.ack(line.seq)
                continue
            # Every un-acked event of a dead session may have reached MLflow (an ack can be lost to
            # a crash or a full disk): check before writing.
            if not _apply_with_retries(writer, old, Pending(line.seq, event, in_doubt=True), probed):
                return False  # its MLflow does not answer: leave the journal for a later pass
            old.ack(line.seq)
        # Runs whose kernel died: close them as KILLED with the energy of the last live flush.
        for uid in open_runs:
            live = last_live.get(uid, {})
            now_ms = int(time.time() * 1000)
            end = RunEnd(uid, "KILLED", now_ms,
                         rows=tuple((key, live[field], 0, now_ms)
                                    for key, field in (("energy_j", "live_energy_j"), ("duration_s", "step"))
                                    if field in live),
                         tags={"energy.closed_by": "recovery: kernel died; energy up to the last live flush"})
            if not _close(writer, old, end, probed):
                return False
        # Sweeps it had started or joined: it leaves them (KILLED); the last member closes the parent.
        for uid in open_sweeps:
            if not _close(writer, old, SweepEnd(uid, "KILLED", int(time.time() * 1000)), probed):
                return False
        return True
    finally:
        if skipped:
            _note_skipped(writer, old, skipped)


def _close(writer: "Writer", old: Spool, end: Event, probed: set[str]) -> bool:
    """Journal ``end`` in the dead session's spool (a failure here is replayed next time) and apply it."""
    from .writer import Pending

    seq = old.append(end.to_wire())
    if not _apply_with_retries(writer, old, Pending(seq, end, in_doubt=True), probed, attempts=1):
        return False
    old.ack(seq)
    return True


def _note_skipped(writer: "Writer", old: Spool, skipped: list[Line]) -> None:
    first = skipped[0]
    more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
    writer.notice(("skipped", str(old.path), tuple(line.number for line in skipped)),
                  f"ipython-energy: skipped {len(skipped)} unreadable line(s) of the journal {old.path}: "
                  f"line {first.number}: {first.error}{more}; every other event of it is replayed, and the "
                  f"skipped lines are kept in {old.rejected_path}.")


def _keep_what_was_not_replayed(old: Spool) -> None:
    """Before a journal is retired: its unreadable lines, and any loss it recorded, into ``rejected/``."""
    try:
        for line in old.lines():
            event, error = _parse(line)
            if event is None:
                old.keep_unreadable(line._replace(error=error))
        held = old.held()
        if held and held.get("events"):
            old.keep({"reason": f"session {old.session} lost {_lost_text(held)} that could not be journalled",
                      "lost": held})
    except OSError:
        pass


def _apply_old(writer: "Writer", item: "Pending", probed: set[str]) -> str | None:
    """Apply one event of a dead session's journal: None when MLflow has it, else why not.

    Unlike :meth:`Writer.apply`, a failure here leaves this session's backend state alone: the
    MLflow that does not answer may be another one than this session's.
    """
    event = item.event
    start = event if isinstance(event, (SweepStart, RunStart)) else writer.context_of(event.uid)
    uri = start.tracking_uri if start is not None else ""
    try:
        if uri not in probed:  # once per pass and MLflow, before MLflow's own long retries
            writer._probe(start)
            probed.add(uri)
        if isinstance(event, (SweepStart, RunStart)):
            writer.remember(event)
        writer._store_for(event.uid).apply(event, writer._context, item.in_doubt)
    except Exception as exc:  # noqa: BLE001 - any backend failure means: keep it and retry
        probed.discard(uri)
        if is_rejection(exc):
            item.rejections += 1
            if item.rejections >= ATTEMPTS:
                writer._set_aside(event, exc)
                return None
        return f"{uri}\n{describe_error(exc)}"
    return None


def _apply_with_retries(writer: "Writer", old: Spool, item: "Pending", probed: set[str],
                        attempts: int = ATTEMPTS) -> bool:
    error = None
    for attempt in range(attempts):
        error = _apply_old(writer, item, probed)
        if error is None:
            return True
        if attempt + 1 < attempts:
            time.sleep(0.5)
    uri, _, why = (error or "").partition("\n")
    writer.old_waiting[old.session] = (uri, why)
    writer.notice(("waiting", old.session, uri),
                  f"ipython-energy: the journal of an earlier session {old.session} ({summarize(old).describe()}) "
                  f"waits for MLflow at {uri}, which is not answering ({why}); it is tried again every "
                  f"{writer.recovery_every_s:g} s. `%energy spool deliver {old.session}` writes it to this "
                  f"session's MLflow instead; `%energy spool discard {old.session}` sets it aside.")
    return False


# ---- %energy spool deliver / discard (the user's thread) ------------------------------------------
class Busy(Exception):
    """The journal is held by a live kernel (or a recovery pass that did not end in time)."""


def _adopt(directory: Path, session: str, timeout_s: float) -> Spool:
    if not any((directory / f"{session}{ext}").exists() for ext in (".jsonl", ".held")):
        raise LookupError(session)
    deadline = time.monotonic() + timeout_s
    while True:
        old = Spool.adopt(directory, session)
        if old is not None:
            return old
        if time.monotonic() >= deadline:
            raise Busy(session)
        time.sleep(0.1)  # the writer's recovery pass may hold it for a moment


def retarget(directory: Path, session: str, tracking_uri: str, experiment: str,
             timeout_s: float = 10.0) -> Journal:
    """Rewrite a dead session's journal so that its events go to ``tracking_uri`` / ``experiment``.

    Kept: every un-acknowledged event, and the starts (of runs and sweeps) they need, acknowledged
    or not, so that their runs exist in the new store.  The runs keep their ``energy.uid``: a second
    delivery, or a crash mid-way, finds them again instead of writing them twice.  Unreadable lines
    go to ``rejected/`` first.  The writer's next recovery pass replays the result.
    """
    old = _adopt(directory, session, timeout_s)
    try:
        valid: list[tuple[int, Event]] = []
        for line in old.lines():
            event, error = _parse(line)
            if event is None:
                old.keep_unreadable(line._replace(error=error))
            else:
                valid.append((line.seq, event))
        need = {event.uid for seq, event in valid if seq > old.acked}
        need |= {event.sweep_uid for _seq, event in valid
                 if isinstance(event, RunStart) and event.uid in need and event.sweep_uid}
        keep = []
        for seq, event in valid:
            if isinstance(event, (SweepStart, RunStart)) and event.uid in need:
                keep.append(dataclasses.replace(event, tracking_uri=tracking_uri, experiment=experiment))
            elif seq > old.acked:
                keep.append(event)
        old.rewrite([event.to_wire() for event in keep])
        return summarize(old)
    finally:
        old.close()


def discard(directory: Path, session: str, timeout_s: float = 10.0) -> tuple[Journal, Path]:
    """Move a dead session's journal into ``spool/discarded/`` (never deleted); returns what it held and where."""
    old = _adopt(directory, session, timeout_s)
    try:
        held = summarize(old)
        return held, old.set_aside("discarded")
    finally:
        old.close()
