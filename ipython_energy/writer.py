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

import dataclasses
import functools
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Union

from . import recovery
from .events import (CellMetricsDraft, Draft, Event, Metrics, RunEnd, RunEndDraft, RunStart, StartEvent, SweepEnd,
                     SweepStart)
from .spool import Spool, SpoolError
from .store import ChartRenderer, MlflowStore
from .transport import JOURNAL_THREAD_NAME, THREAD_NAME, Pace, describe_error, is_http, is_rejection

log = logging.getLogger("ipython_energy")

#: The most metric rows one merged event carries (MLflow takes 1,000 per log_batch).
_MAX_BATCH_ROWS = 900
#: The most whole runs applied together (their run numbers are one log_batch of params: MLflow takes 100).
_MAX_BACKLOG_RUNS = 32


@dataclass(frozen=True)
class Backlog:
    """Whole runs queued one after another, each its start and its end with the metrics queued
    between them merged in: applied together (:meth:`MlflowStore.apply_runs`), never journalled.

    ``events``: how many queued events it stands for."""

    runs: tuple[tuple[RunStart, RunEnd], ...]
    events: int
    type = "backlog"

    @property
    def uid(self) -> str:
        return self.runs[0][0].uid


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
    """What the writer can say of MLflow and the spool (``%energy``, the warnings after cells).

    MLflow is in one of three states (:attr:`state`): ``ok``; ``slow`` (it answers, or an answer
    is still awaited within the longest wait, but slower than ``mlflow_slow_s``; it is written
    to); ``not answering`` (``backend_ok`` False: refused or dropped connections, errors, or no
    answer within ``mlflow_timeout_s``, for at least :attr:`Writer.report_after_s`).
    """

    backend_ok: bool
    pending: int
    spooled: int
    last_error: str | None
    outage_since: float | None
    spool_ok: bool
    spool_error: str | None
    slow: bool = False
    slow_detail: str | None = None  # "2.0 s per request", "no answer for 7 s"
    backend_uri: str | None = None  # the tracking URI that failed or is slow (the last one written to)

    @property
    def state(self) -> str:
        if not self.backend_ok:
            return "not answering"
        return "slow" if self.slow else "ok"


class Writer:
    """Journals events (one background thread) and applies them to MLflow (another)."""

    #: A failure is reported (``backend_ok`` False) once MLflow has given no good answer for this
    #: long since (twice its answer time, if longer): a request that failed once while the
    #: server goes on answering is retried, and is no outage.
    report_after_s = 2.0
    #: Ended runs and sweeps whose entries are kept (a late event of one still finds it).
    keep_ended = 64

    def __init__(self, spool: Spool | None, *, adopt_orphans: bool = True,
                 render_chart: ChartRenderer | None = None, retry_max_s: float = 5.0,
                 timeout_s: float = 120.0, slow_s: float = 1.0):
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
        self._ended: deque[str] = deque()  # uids whose RunEnd/SweepEnd was applied, oldest first
        self.pace = Pace(timeout_s, slow_s)  # how fast MLflow answers; each request's timeout
        self._failed_at: float | None = None  # monotonic time of the first failure since the last success
        self.backend_uri: str | None = None
        self.last_error: str | None = None
        self.outage_since: float | None = None
        self.spool_error: str | None = None
        self.applied = 0
        self._applying_since: float | None = None
        self._last_ok = float("-inf")
        self._last_recovery = float("-inf")
        self.recovery_every_s = 30.0
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
        """True when MLflow answers promptly and the spool is fine: the per-cell check, cheaper than :meth:`status`."""
        return self._reported_ok() and self.spool_error is None and self._slow_detail() is None

    def _reported_ok(self) -> bool:
        """Not reported as down: no failure, or the server has answered well within the last
        ``report_after_s`` (twice its answer time when slower) since: the retry is under way."""
        failed = self._failed_at
        if failed is None:
            return True
        quiet_since = max(failed, self.pace.last_good)
        return time.monotonic() - quiet_since < max(self.report_after_s, 2 * (self.pace.latency_s() or 0.0))

    def _slow_detail(self) -> str | None:
        """Why MLflow counts as slow, or None: its recent answers, an answer awaited, a request timed out."""
        pace = self.pace
        since = self._applying_since
        # Since the last answer: a backlog's one application takes many requests, each answered.
        waited = None if since is None else time.monotonic() - max(since, pace.last_good)
        if waited is not None and waited > 5 * pace.slow_s:
            return f"no answer for {waited:.0f} s"
        latency = pace.latency_s()
        if latency is not None and latency > pace.slow_s:
            return f"{latency:.1f} s per request"
        if pace.timeouts:
            return f"no answer within {pace.expired_s or pace.FIRST_TIMEOUT_S:g} s; waiting up to {pace.timeout_s():g} s"
        return None

    def status(self) -> WriterStatus:
        ok = self._reported_ok()
        slow = self._slow_detail() if ok else None
        return WriterStatus(
            backend_ok=ok,
            pending=len(self._inbox) + len(self._pending),
            spooled=len(self._pending),
            last_error=self.last_error,
            outage_since=None if ok else self.outage_since,
            spool_ok=self.spool_error is None,
            spool_error=self.spool_error,
            slow=slow is not None,
            slow_detail=slow,
            backend_uri=self.backend_uri,
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
                item, group = self._head()
                if self.apply(item, more=len(self._pending) > len(group)):
                    for done in group:
                        self._pending.popleft()
                        done.applied = True
                        if self._spool is not None and done.seq > 0 and self.spool_error is None:
                            self._spool.ack(done.seq)
                        elif done.seq == 0 and self._held:
                            self._record_held()  # one event fewer that only memory holds
                    backoff = 0.25
                    continue
                if not isinstance(item.event, Backlog) or item.rejections:
                    # A backlog that failed part-way is tried again as it is (MlflowStore.apply_runs
                    # resumes it); one that MLflow refused is applied event by event, in doubt.
                    for failed in (item, *group):
                        failed.in_doubt = True  # and, for a group, applied one by one from now on
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

    def _head(self) -> tuple[Pending, list[Pending]]:
        """The next event to apply, and the queued events it stands for.

        A run's metrics events queued one behind another, and its end behind them, go to MLflow
        as one event (one ``log_batch``): after an outage most queued events are of this kind,
        and one request each was most of the catch-up's time.  Events that failed once are
        applied one by one again (their retries, rejections and in-doubt checks are their own).
        Whole runs queued one after another (a backlog) go together: :meth:`_backlog`.
        """
        first = self._pending[0]
        if isinstance(first.event, RunStart):
            return self._backlog() or (first, [first])
        if not isinstance(first.event, Metrics) or first.in_doubt or first.rejections:
            return first, [first]
        group, rows = [first], list(first.event.rows)
        for item in itertools.islice(self._pending, 1, None):
            event = item.event
            if not isinstance(event, (Metrics, RunEnd)) or event.uid != first.event.uid or item.in_doubt \
                    or item.rejections or len(rows) + len(event.rows) > _MAX_BATCH_ROWS:
                break
            group.append(item)
            if isinstance(event, RunEnd):
                return Pending(first.seq, dataclasses.replace(event, rows=tuple(rows) + event.rows)), group
            rows += event.rows
        if len(group) == 1:
            return first, group
        return Pending(first.seq, Metrics(first.event.uid, tuple(rows))), group

    def _backlog(self) -> tuple[Pending, list[Pending]] | None:
        """Whole runs at the head of the queue, one after another, as one :class:`Backlog`.

        After an outage the queue is mostly whole runs; applied together they cost three requests
        a run, several in flight at once, where one by one they cost five, one after another.
        The runs share a store and a sweep (or none); none failed before.
        """
        pending = list(self._pending)
        runs: list[tuple[RunStart, RunEnd]] = []
        group: list[Pending] = []
        while len(runs) < _MAX_BACKLOG_RUNS:
            whole = self._whole_run(pending, len(group))
            if whole is None:
                break
            start, end, items = whole
            if runs and (start.sweep_uid, start.tracking_uri, start.experiment) != \
                    (runs[0][0].sweep_uid, runs[0][0].tracking_uri, runs[0][0].experiment):
                break
            runs.append((start, end))
            group += items
        if not runs:
            return None
        return Pending(group[0].seq, Backlog(tuple(runs), len(group))), group

    def _whole_run(self, pending: list[Pending], i: int) -> tuple[RunStart, RunEnd, list[Pending]] | None:
        """The run starting at ``pending[i]`` if its start, its metrics and its end follow one another
        there and fit one ``log_batch``; None otherwise (it is then applied event by event)."""
        if i >= len(pending):
            return None
        first, start = pending[i], pending[i].event
        if first.in_doubt or first.rejections or not isinstance(start, RunStart) or start.parent_uid \
                or (start.sweep_uid and start.sweep_uid not in self._context):
            return None
        rows: list = []
        for j in range(i + 1, len(pending)):
            item, event = pending[j], pending[j].event
            if item.in_doubt or item.rejections or getattr(event, "uid", None) != start.uid:
                return None
            if isinstance(event, Metrics):
                rows += event.rows
                if len(rows) > _MAX_BATCH_ROWS:
                    return None
                continue
            if not isinstance(event, RunEnd):
                return None
            params = {**start.params, **event.params}
            clash = any(start.params.get(k, v) != v for k, v in event.params.items())
            size = len(rows) + len(event.rows) + len(params) + len(event.tags) + 1
            if event.delete or clash or size > _MAX_BATCH_ROWS or len(params) > 100 or len(event.tags) >= 100:
                return None
            return start, dataclasses.replace(event, rows=tuple(rows) + event.rows), pending[i:j + 1]
        return None

    def apply(self, item: Pending, more: bool = False) -> bool:
        """Apply one event to MLflow (True), or leave it for a retry (False); never raises.

        ``more``: further events are queued behind it (a sweep's totals then wait for them)."""
        event = item.event
        self._applying_since = time.monotonic()
        try:
            start = event.runs[0][0] if isinstance(event, Backlog) else \
                event if isinstance(event, (SweepStart, RunStart)) else self._context.get(event.uid)
            if start is not None:
                self.backend_uri = start.tracking_uri
            self._probe(start)
            if isinstance(event, Backlog):
                for run_start, _end in event.runs:
                    self._context[run_start.uid] = run_start
                self._store_for(event.uid).apply_runs(list(event.runs), self._context)
            else:
                if isinstance(event, (SweepStart, RunStart)):
                    self._context[event.uid] = event
                self._store_for(event.uid).apply(event, self._context, item.in_doubt, more=more)
            if not more:
                for store in self._stores.values():
                    store.settle()  # the sweeps' totals, once the queue is drained
        except Exception as exc:  # noqa: BLE001 - any backend failure means: keep it and retry
            if isinstance(event, Backlog) and is_rejection(exc):
                item.rejections += 1  # its events are applied one by one now, each with its own rejections
                return False
            if is_rejection(exc):
                # The backend answered and refused this event (bad value, deleted run, …). It is
                # retried a few times, then set aside in the rejected journal so that it cannot
                # hold up every later measurement.
                item.rejections += 1
                if item.rejections >= 3:
                    self._set_aside(event, exc)
                    return True
                return False
            self.last_error = describe_error(exc)
            if self.pace.timeouts and not self.pace.gave_up():
                # No answer yet within a wait shorter than the longest: slow, not down.  The
                # retry waits longer (Pace.timeout_s doubles).
                self.last_error = f"no answer within {self.pace.expired_s:g} s"
            elif self._failed_at is None:
                self._failed_at = time.monotonic()
                self.outage_since = time.time()
            log.debug("ipython-energy: MLflow write failed", exc_info=True)
            return False
        finally:
            self._applying_since = None
        self._failed_at = None
        self._last_ok = time.monotonic()
        self.outage_since = None
        self.last_error = None
        if isinstance(event, Backlog):
            self.applied += event.events
            for run_start, _end in event.runs:
                self._retire(run_start.uid)
            return True
        self.applied += 1
        if isinstance(event, (RunEnd, SweepEnd)):
            self._retire(event.uid)
        return True

    @property
    def backend_ok(self) -> bool:
        """False while MLflow is reported as not answering (see :attr:`report_after_s`)."""
        return self._reported_ok()

    def _retire(self, uid: str) -> None:
        """Forget ended runs and sweeps, :attr:`keep_ended` ends later: memory stays flat over a session.

        Events are applied in order and none of a run follows its end, so one that ended this
        long ago has no pending event left; a late one (a live flush racing the end) finds the
        run while it is among the last ``keep_ended``.
        """
        self._ended.append(uid)
        while len(self._ended) > self.keep_ended:
            old = self._ended.popleft()
            start = self._context.pop(old, None)
            if start is not None:
                store = self._stores.get((start.tracking_uri, start.experiment))
                if store is not None:
                    store.forget(old)

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

    def _probe(self, start: StartEvent | None) -> None:
        """Before writing after a failure, check the backend cheaply.

        A tracking server is asked for /health, with the :class:`Pace`'s timeout (it grows while
        the server is slow: a server that takes 2 s is waited for, not taken for down); a sqlite
        store that does not exist yet must have a writable directory (MLflow would retry
        creating it for many seconds).
        """
        uri = start.tracking_uri if start is not None else ""
        if uri.startswith("sqlite:///"):
            if self._failed_at is None and time.monotonic() - self._last_ok <= 5.0:
                return
            import os

            path = uri[len("sqlite:///"):]
            folder = os.path.dirname(path) or "."
            if path and not path.startswith(":memory:") and not os.path.exists(path) \
                    and not os.access(folder, os.W_OK):
                raise PermissionError(f"cannot create {path}: {folder} is not writable")
        if is_http(uri) and self._failed_at is not None:
            answer = self.pace.send(functools.partial(_health, uri.rstrip("/") + "/health"), tries=3)
            if answer.status_code != 200:
                raise ConnectionError(f"{uri} answered {answer.status_code} to /health")

    def sweep_view(self, uid: str, tracking_uri: str, experiment: str):
        """The last :class:`~ipython_energy.ledger.Step` of this process's sweep ``uid`` that the writer
        derived from MLflow (every member's runs), or None.  Any thread: it reads what the journal
        thread last stored, never MLflow."""
        store = self._stores.get((tracking_uri, experiment))
        return store.sweep_view(uid) if store is not None else None

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
            store = self._stores[key] = MlflowStore(*key, render_chart=self._render_chart, pace=self.pace)
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


@dataclass
class _Answer:
    status_code: int


def _health(url: str, timeout_s: float) -> _Answer:
    """GET ``url`` (a tracking server's /health); its HTTP status, or the exception of no answer."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return _Answer(response.status)
    except urllib.error.HTTPError as exc:
        return _Answer(exc.code)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, BaseException):
            raise exc.reason from exc  # a timeout stays a timeout (Pace tells slow from down by it)
        raise
