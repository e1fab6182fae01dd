"""The background writer: every event goes to the spool first, then to MLflow, off the cell's path.

``submit()`` only appends an event (:mod:`ipython_energy.events`) to an in-memory queue (microseconds).  A named daemon thread
journals each event (fsynced) and applies the events to MLflow in order.  While the
backend is slow, down or erroring the events wait in the journal and are retried with
backoff; they are applied in order and exactly once when it answers again, in this
kernel or, after a crash, in the next kernel that loads the extension.

Every application is idempotent when its outcome is in doubt (see :mod:`ipython_energy.store`,
which talks to MLflow); the journals of dead sessions are replayed by :mod:`ipython_energy.recovery`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Union

from . import recovery
from .events import CellMetricsDraft, Draft, Event, Metrics, RunEnd, RunEndDraft, RunStart, StartEvent, SweepStart
from .spool import Spool, SpoolError
from .store import JOURNAL_THREAD_NAME, THREAD_NAME, ChartRenderer, MlflowStore, describe_error, is_rejection

log = logging.getLogger("ipython_energy")


@dataclass
class Pending:
    """An event on its way to MLflow, with its retry state beside it.

    ``seq``: its line in the spool (0: held in memory only); ``in_doubt``: an earlier attempt
    failed after it may have reached the server; ``rejections``: how often MLflow refused it;
    ``applied``: MLflow has it (an event held in memory only then need not be journalled).
    """

    seq: int
    event: Event
    in_doubt: bool = False
    rejections: int = 0
    applied: bool = False


@dataclass
class WriterStatus:
    backend_ok: bool
    pending: int
    spooled: int
    last_error: str | None
    outage_since: float | None
    spool_ok: bool
    spool_error: str | None


class Writer:
    """Journals events (one background thread) and applies them to MLflow (another)."""

    def __init__(self, spool: Spool | None, *, adopt_orphans: bool = True,
                 render_chart: ChartRenderer | None = None, retry_max_s: float = 5.0):
        self._spool = spool
        self._adopt = adopt_orphans
        self._render_chart = render_chart
        self._stores: dict[tuple[str, str], MlflowStore] = {}
        self._inbox: deque[Union[Event, Draft]] = deque()
        self._pending: deque[Pending] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._journal_thread: threading.Thread | None = None
        self._journal_wake = threading.Event()
        self._lock = threading.Lock()
        self._retry_max_s = retry_max_s
        self._context: dict[str, StartEvent] = {}  # uid -> its start event (uri, experiment, sweep)
        self.backend_ok = True
        self.last_error: str | None = None
        self.outage_since: float | None = None
        self.spool_error: str | None = None
        self.applied = 0
        self._applying_since: float | None = None
        self._last_ok = float("-inf")
        self._last_recovery = float("-inf")
        self.recovery_every_s = 30.0
        self.slow_after_s = 5.0
        self.rejected: list[tuple[Event, str]] = []
        # Events the spool could not take (a full disk), oldest first: journalled, in order, as soon
        # as it takes them again; until then their count is kept in the spool's ``.held`` file.
        self._held: deque[Pending] = deque()
        self._held_lock = threading.Lock()
        self._held_recorded: tuple[int, int, float] = (0, 0, 0.0)
        #: Notes for the user made on the writer's threads (old journals' skipped lines, losses,
        #: journals waiting for another MLflow): each once; printed after a cell or by ``%energy``.
        self.notices: deque[str] = deque(maxlen=100)
        self._noticed: set = set()
        #: Dead sessions' journals whose MLflow did not answer on the last recovery pass:
        #: session -> (tracking URI, error).  Never part of this session's backend state.
        self.old_waiting: dict[str, tuple[str, str]] = {}
        self.replaying: str | None = None  # the dead session whose journal a recovery pass holds now
        self._recovery_wanted = threading.Event()
        self._passes_started = 0
        self._passes_done = 0

    # ---- producer side (the user's thread) -----------------------------------------------
    def submit(self, event: Union[Event, Draft]) -> None:
        """Queue ``event``; returns at once.

        A draft (:class:`~ipython_energy.events.RunEndDraft`, ``CellMetricsDraft``) is finished
        on the journal thread before it is spooled, so deriving its rows costs the caller nothing.
        """
        self._inbox.append(event)
        self._journal_wake.set()
        if self._thread is None:
            self.start()

    def start(self) -> None:
        """Start the threads now (the writer also adopts dead sessions' journals).

        Two threads: one journals each event to the spool as soon as it is submitted, the other
        applies them to MLflow.  A call stuck in MLflow's own retries (minutes, when a server
        vanishes mid-request) or a long recovery of old journals then never keeps a new event
        out of the journal, where a kernel that dies meanwhile still has it.
        """
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._busy = True  # until the thread says otherwise: flush() must not return early
                    self._journal_thread = threading.Thread(target=self._journal_loop, name=JOURNAL_THREAD_NAME,
                                                            daemon=True)
                    self._journal_thread.start()
                    self._thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
                    self._thread.start()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every submitted event is in MLflow; False if that did not happen in time."""
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s != timeout_s:
            # NaN made the wait below never end while anything was pending
            raise ValueError(f"timeout_s must be a number of seconds, not {timeout_s!r}")
        if self._thread is None and not self._inbox:
            return True
        self.start()
        deadline = time.monotonic() + timeout_s
        self._journal_wake.set()
        self._wake.set()
        with self._idle:
            while self._inbox or self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.2))
        return True

    def healthy(self) -> bool:
        """True when MLflow and the spool are fine: the per-cell check, cheaper than :meth:`status`."""
        since = self._applying_since
        return (self.backend_ok and self.spool_error is None
                and (since is None or time.monotonic() - since <= self.slow_after_s))

    def status(self) -> WriterStatus:
        since = self._applying_since
        slow = since is not None and time.monotonic() - since > self.slow_after_s
        if slow and self.last_error is None:
            self.last_error = f"no answer for {time.monotonic() - since:.0f} s"
        return WriterStatus(
            backend_ok=self.backend_ok and not slow,
            pending=len(self._inbox) + len(self._pending),
            spooled=len(self._pending),
            last_error=self.last_error,
            outage_since=self.outage_since,
            spool_ok=self.spool_error is None,
            spool_error=self.spool_error,
        )

    def notice(self, key, text: str) -> None:
        """Queue ``text`` for the user once per ``key`` in this process (any thread)."""
        if key not in self._noticed:
            self._noticed.add(key)
            self.notices.append(text)

    def take_notices(self) -> list[str]:
        """The notes not shown yet, oldest first; each is handed out once."""
        out = []
        while True:
            try:
                out.append(self.notices.popleft())
            except IndexError:
                return out

    def recover_now(self, timeout_s: float) -> bool:
        """Run a recovery pass (dead sessions' journals) that starts after this call; wait for it to end."""
        self.start()
        with self._idle:
            target = self._passes_started + 1
        self._recovery_wanted.set()
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._passes_done < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.2))
        return True

    def close(self, timeout_s: float = 5.0) -> bool:
        """Flush for up to ``timeout_s``, stop the thread, and retire the journal if all is in MLflow."""
        done = self.flush(timeout_s)
        self._stop.set()
        self._wake.set()
        self._journal_wake.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._journal_thread is not None:
            self._journal_thread.join(timeout=1.0)
        if self._spool is not None:
            self._spool.close(retire=done)
        return done

    # ---- the thread -----------------------------------------------------------------------
    _busy = False

    def _recover(self) -> None:
        with self._idle:
            self._passes_started += 1
        if self._adopt and self._spool is not None:
            self._busy = True
            try:
                recovery.adopt_orphans(self, self._spool)
            except Exception as exc:  # noqa: BLE001 - recovery must never kill the writer
                log.debug("ipython-energy: could not replay an old spool", exc_info=True)
                self.notice(("recovery", repr(exc)), f"ipython-energy: could not replay an old journal in "
                            f"{self._spool.directory}: {exc!r}; the journals are kept")
        self._last_recovery = time.monotonic()
        with self._idle:
            self._passes_done += 1
            self._idle.notify_all()

    def _loop(self) -> None:
        self._recover()
        backoff = 0.25
        while not self._stop.is_set():
            if (self._recovery_wanted.is_set() or time.monotonic() - self._last_recovery > self.recovery_every_s) \
                    and not self._pending:
                # A kernel still shutting down when this one loaded held its journal then.
                self._recovery_wanted.clear()
                self._recover()
            self._busy = True
            if self._pending:
                item = self._pending[0]
                if self.apply(item):
                    self._pending.popleft()
                    item.applied = True
                    if self._spool is not None and item.seq > 0 and self.spool_error is None:
                        self._spool.ack(item.seq)
                    elif item.seq == 0 and self._held:
                        self._record_held()  # one event fewer that only memory holds
                    backoff = 0.25
                    continue
                item.in_doubt = True
                self._busy = False
                self._notify_idle()
                self._wake.wait(backoff)
                self._wake.clear()
                backoff = min(backoff * 2, self._retry_max_s)
                continue
            self._busy = False
            self._notify_idle()
            self._wake.wait(1.0)
            self._wake.clear()
        self._busy = False
        self._notify_idle()

    def _notify_idle(self) -> None:
        with self._idle:
            self._idle.notify_all()

    def _journal_loop(self) -> None:
        while not self._stop.is_set():
            self._journal_wake.wait(1.0)
            self._journal_wake.clear()
            self._journal_inbox()

    def _journal_inbox(self) -> None:
        """Spool every submitted event, in order, then hand it to the MLflow thread (journal thread only).

        An event the spool cannot take (a full disk) is held in memory only (``seq`` 0) and
        counted in the spool's ``.held`` file.  Later events queue behind it: nothing is journalled
        before every held event is, so sequence numbers follow the events' order and an
        acknowledgement (MLflow has everything up to ``seq``) stays true.  Called at least every
        second, so held events are journalled as soon as the disk takes them again.
        """
        held_before = len(self._held)
        if self._held:
            self._journal_held()
        while self._inbox:
            event = _finished(self._inbox[0])  # left in the inbox until it is pending: flush() never sees neither
            item = Pending(0, event)
            if self._spool is not None:
                if not self._held:
                    try:
                        item.seq = self._spool.append(event.to_wire())
                        self.spool_error = None
                    except SpoolError as exc:
                        # Reported to the user once, after a cell (Tracker.backend_warning).
                        log.debug("ipython-energy: %s; keeping measurements in memory", exc)
                        self.spool_error = str(exc)
                if item.seq == 0:
                    self._held.append(item)
            self._pending.append(item)
            self._inbox.popleft()
            self._wake.set()
        if self._held or held_before:
            self._record_held()

    def _journal_held(self) -> None:
        """Journal the events held in memory only, oldest first, until the spool refuses one."""
        wrote = False
        while self._held:
            item = self._held[0]
            if not item.applied:  # MLflow has the applied ones: nothing to keep
                try:
                    item.seq = self._spool.append(item.event.to_wire())
                except SpoolError as exc:
                    self.spool_error = str(exc)
                    return
                wrote = True
            self._held.popleft()
        if wrote:  # the spool takes events again (dropping applied ones says nothing about the disk)
            self.spool_error = None

    def _record_held(self) -> None:
        """Write how many events (runs, joules in run ends) only memory holds to the spool's ``.held`` file."""
        if self._spool is None:
            return
        with self._held_lock:
            held = [p for p in list(self._held) if not p.applied and p.seq == 0]
            runs = {p.event.uid for p in held if isinstance(p.event, (RunStart, RunEnd))}
            energy = sum(p.event.energy_j() or 0.0 for p in held if isinstance(p.event, RunEnd))
            record = (len(held), len(runs), float(energy))
            if record != self._held_recorded and self._spool.record_held(*record):
                self._held_recorded = record

    def remember(self, event: StartEvent) -> None:
        """Know where ``event``'s run lives (its URI and experiment) before any later event of it."""
        self._context[event.uid] = event

    @property
    def spool(self) -> Spool | None:
        """This session's journal (None: no durable spool could be made)."""
        return self._spool

    @property
    def held_in_memory(self) -> int:
        """Events the spool could not take (a full disk) that MLflow does not have yet either."""
        return sum(1 for p in list(self._held) if not p.applied and p.seq == 0)

    def knows(self, uid: str) -> bool:
        """Whether a start event of ``uid`` was seen (so that MLflow can be told where it goes)."""
        return uid in self._context

    def context_of(self, uid: str) -> StartEvent | None:
        return self._context.get(uid)

    def apply(self, item: Pending) -> bool:
        """Apply one event to MLflow (True), or leave it for a retry (False); never raises."""
        event = item.event
        self._applying_since = time.monotonic()
        try:
            if not self.backend_ok or time.monotonic() - self._last_ok > 5.0:
                self._probe(event)
            if isinstance(event, (SweepStart, RunStart)):
                self._context[event.uid] = event
            self._store_for(event.uid).apply(event, self._context, item.in_doubt)
        except Exception as exc:  # noqa: BLE001 - any backend failure means: keep it and retry
            if is_rejection(exc):
                # The backend answered and refused this event (bad value, deleted run, …). It is
                # retried a few times, then set aside in the rejected journal so that it cannot
                # hold up every later measurement.
                item.rejections += 1
                if item.rejections >= 3:
                    self._set_aside(event, exc)
                    return True
                return False
            if self.backend_ok:
                self.outage_since = time.time()
            self.backend_ok = False
            self.last_error = describe_error(exc)
            log.debug("ipython-energy: MLflow write failed", exc_info=True)
            return False
        finally:
            self._applying_since = None
        self.backend_ok = True
        self._last_ok = time.monotonic()
        self.outage_since = None
        self.last_error = None
        self.applied += 1
        return True

    def _set_aside(self, event: Event, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        self.rejected.append((event, reason))
        del self.rejected[:-100]
        log.warning("ipython-energy: MLflow refused a %s event (%s); it is kept in %s",
                    event.type, reason, self._spool.rejected_path if self._spool else "memory")
        if self._spool is not None:
            try:
                self._spool.reject(event.to_wire(), reason)
            except OSError:
                pass

    def _probe(self, event: Event) -> None:
        """During an outage, check the backend cheaply before MLflow's long retries.

        An HTTP tracking server is asked for /health (2 s); a sqlite store that does not exist
        yet must have a writable directory (MLflow would retry creating it for many seconds).
        """
        start = event if isinstance(event, (SweepStart, RunStart)) else self._context.get(event.uid)
        uri = start.tracking_uri if start is not None else ""
        if uri.startswith("sqlite:///"):
            import os

            path = uri[len("sqlite:///"):]
            folder = os.path.dirname(path) or "."
            if path and not path.startswith(":memory:") and not os.path.exists(path) \
                    and not os.access(folder, os.W_OK):
                raise PermissionError(f"cannot create {path}: {folder} is not writable")
        if uri.startswith(("http://", "https://")):
            import urllib.request

            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=2.0) as response:
                if response.status != 200:
                    raise ConnectionError(f"{uri} answered {response.status} to /health")

    def stores(self) -> list[MlflowStore]:
        """The MLflow stores this writer has written to, one per (tracking URI, experiment)."""
        return list(self._stores.values())

    def _store_for(self, uid: str) -> MlflowStore:
        start = self._context.get(uid)
        if start is None:  # an event whose run was never started in any journal seen
            raise LookupError(f"no MLflow run carries energy.uid={uid}")
        key = (start.tracking_uri, start.experiment)
        store = self._stores.get(key)
        if store is None:
            store = self._stores[key] = MlflowStore(*key, render_chart=self._render_chart)
        return store


def _finished(event: Union[Event, Draft]) -> Event:
    """The event itself, or the event a draft makes (journal thread only).

    A draft that cannot be finished (a bug) still ends its run, with the error in a tag.
    """
    if not isinstance(event, (RunEndDraft, CellMetricsDraft)):
        return event
    try:
        return event.finish()
    except Exception as exc:  # noqa: BLE001 - a bug here must not stop the journal
        log.warning("ipython-energy: could not derive the metrics of run %s: %r", event.uid, exc)
        if isinstance(event, RunEndDraft):
            return RunEnd(event.uid, event.status, event.t_ms, tags={"energy.build_error": repr(exc)[:500]})
        return Metrics(event.uid)
