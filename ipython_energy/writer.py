"""The background writer: every event goes to the spool first, then to MLflow, off the cell's path.

``submit()`` only appends to an in-memory queue (microseconds).  A named daemon thread
journals each event (fsynced) and applies the events to MLflow in order.  While the
backend is slow, down or erroring the events wait in the journal and are retried with
backoff; they are applied in order and exactly once when it answers again, in this
kernel or, after a crash, in the next kernel that loads the extension.

Every application is idempotent when its outcome is in doubt (the request failed after
it may have reached the server): runs are found again by their ``energy.uid`` tag and
metric points already present are not logged twice.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from .spool import Spool, SpoolError

log = logging.getLogger("ipython_energy")

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
THREAD_NAME = "ipython-energy-writer"
JOURNAL_THREAD_NAME = "ipython-energy-journal"


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
                 backend_factory: Callable[[str, str], "Backend"] | None = None,
                 retry_max_s: float = 5.0):
        self._spool = spool
        self._adopt = adopt_orphans
        self._backend_factory = backend_factory or Backend
        self._backends: dict[tuple[str, str], Backend] = {}
        self._inbox: deque[dict[str, Any]] = deque()
        self._pending: deque[tuple[int, dict[str, Any]]] = deque()
        self._memory_seq = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._journal_thread: threading.Thread | None = None
        self._journal_wake = threading.Event()
        self._lock = threading.Lock()
        self._retry_max_s = retry_max_s
        self._context: dict[str, dict[str, Any]] = {}  # uid -> start event (uri, experiment, kind, sweep)
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
        self.rejected: list[tuple[dict[str, Any], str]] = []
        self.listeners: list[Callable[[dict[str, Any], str], None]] = []

    # ---- producer side (the user's thread) -----------------------------------------------
    def submit(self, event: dict[str, Any]) -> None:
        """Queue ``event``; returns at once.

        An event may carry ``_build``: a function returning more fields, called on the journal
        thread before the event is spooled, so deriving them costs the caller nothing.
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
        if self._adopt and self._spool is not None:
            self._busy = True
            try:
                self._adopt_orphans()
            except Exception as exc:  # noqa: BLE001 - recovery must never kill the writer
                log.warning("ipython-energy: could not replay an old spool: %r", exc)
        self._last_recovery = time.monotonic()

    def _loop(self) -> None:
        self._recover()
        backoff = 0.25
        while not self._stop.is_set():
            if time.monotonic() - self._last_recovery > self.recovery_every_s and not self._pending:
                # A kernel still shutting down when this one loaded held its journal then.
                self._recover()
            self._busy = True
            if self._pending:
                seq, event = self._pending[0]
                if self._apply_safely(event, in_doubt=event.get("_in_doubt", False)):
                    self._pending.popleft()
                    if self._spool is not None and seq > 0 and self.spool_error is None:
                        self._spool.ack(seq)
                    backoff = 0.25
                    continue
                event["_in_doubt"] = True
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
        """Spool every submitted event, in order, then hand it to the MLflow thread (journal thread only)."""
        while self._inbox:
            event = self._inbox[0]  # left in the inbox until it is pending: flush() never sees neither
            build = event.pop("_build", None)
            if build is not None:  # metric rows and tags are derived here, not on the user's thread
                try:
                    event.update(build())
                except Exception as exc:  # noqa: BLE001 - a bug here must not stop the journal
                    log.warning("ipython-energy: could not derive the %s event's fields: %r", event.get("type"), exc)
                    event.setdefault("tags", {})["energy.build_error"] = repr(exc)[:500]
            seq = 0
            if self._spool is not None:
                try:
                    seq = self._spool.append(event)
                    self.spool_error = None
                except SpoolError as exc:
                    # Reported to the user once, after a cell (Tracker.backend_warning).
                    log.debug("ipython-energy: %s; keeping measurements in memory", exc)
                    self.spool_error = str(exc)
            self._pending.append((seq, event))
            self._inbox.popleft()
            self._wake.set()

    def _apply_safely(self, event: dict[str, Any], in_doubt: bool) -> bool:
        self._applying_since = time.monotonic()
        try:
            if not self.backend_ok or time.monotonic() - self._last_ok > 5.0:
                self._probe(event)
            self._apply(event, in_doubt)
        except Exception as exc:  # noqa: BLE001 - any backend failure means: keep it and retry
            if _is_rejection(exc):
                # The backend answered and refused this event (bad value, deleted run, …). It is
                # retried a few times, then set aside in the rejected journal so that it cannot
                # hold up every later measurement.
                event["_rejections"] = event.get("_rejections", 0) + 1
                if event["_rejections"] >= 3:
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
        for listener in list(self.listeners):
            listener(event, "applied")
        return True

    def _set_aside(self, event: dict[str, Any], exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        self.rejected.append((event, reason))
        del self.rejected[:-100]
        log.warning("ipython-energy: MLflow refused a %s event (%s); it is kept in %s",
                    event.get("type"), reason, "the rejected journal" if self._spool else "memory")
        if self._spool is not None:
            try:
                self._spool.reject(event, reason)
            except OSError:
                pass

    def _probe(self, event: dict[str, Any]) -> None:
        """During an outage, check the backend cheaply before MLflow's long retries.

        An HTTP tracking server is asked for /health (2 s); a sqlite store that does not exist
        yet must have a writable directory (MLflow would retry creating it for many seconds).
        """
        uid = event.get("uid")
        ctx = event if event.get("tracking_uri") else self._context.get(uid, {})
        uri = ctx.get("tracking_uri", "")
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

    # ---- applying events -------------------------------------------------------------------
    def _backend_for(self, uid: str) -> "Backend":
        ctx = self._context[uid]
        key = (ctx["tracking_uri"], ctx["experiment"])
        backend = self._backends.get(key)
        if backend is None:
            backend = self._backend_factory(*key)
            self._backends[key] = backend
        return backend

    def _apply(self, event: dict[str, Any], in_doubt: bool) -> None:
        kind = event["type"]
        uid = event["uid"]
        if kind in ("sweep_start", "run_start"):
            self._context[uid] = event
            self._backend_for(uid).start(event, self._context, in_doubt)
        elif kind == "metrics":
            self._backend_for(uid).log_metrics(uid, event["metrics"], in_doubt)
        elif kind == "run_end":
            backend = self._backend_for(uid)
            sweep_uid = self._context[uid].get("sweep_uid")
            if not sweep_uid:
                backend.end_run(event, in_doubt)
                return
            # Ending a child and recounting its sweep is one step for every writer on this host,
            # so that another writer's count never falls between the two (see update_sweep).
            with backend.sweep_lock(sweep_uid):
                backend.end_run(event, in_doubt)
                if event.get("delete"):
                    backend.forget_child(sweep_uid, event["uid"])
                else:
                    backend.update_sweep(sweep_uid, self._context, in_doubt, ended=event)
        elif kind == "sweep_end":
            self._backend_for(uid).end_sweep(event, self._context)
        else:
            log.warning("ipython-energy: unknown event type %r skipped", kind)

    # ---- recovery of dead sessions -----------------------------------------------------------
    def _adopt_orphans(self) -> None:
        directory = self._spool.directory
        for session in Spool.sessions(directory):
            if session == self._spool.session:
                continue
            old = Spool.adopt(directory, session)
            if old is None:
                continue
            try:
                self._replay(old)
            finally:
                old.close(retire=old.acked >= old.last_seq)

    def _replay(self, old: Spool) -> None:
        events = old.events()
        open_runs: dict[str, dict[str, Any]] = {}
        last_live: dict[str, dict[str, float]] = {}
        for seq, ev in events:
            uid = ev.get("uid")
            if ev["type"] in ("sweep_start", "run_start"):
                self._context[uid] = ev
                if ev["type"] == "run_start":
                    open_runs[uid] = ev
            elif ev["type"] == "run_end":
                open_runs.pop(uid, None)
            elif ev["type"] == "metrics":
                for key, value, step, _t in ev["metrics"]:
                    if key in ("live_energy_j", "live_power_w"):
                        last_live.setdefault(uid, {})[key] = value
                        last_live[uid]["step"] = step
            if seq <= old.acked:
                continue
            for _attempt in range(3):
                # Every un-acked event of a dead session may have reached MLflow (an ack can be
                # lost to a crash or a full disk): check before writing.
                if self._apply_safely(ev, in_doubt=True):
                    break
                time.sleep(0.5)
            else:
                return  # backend still down: leave the journal for a later load
            old.ack(seq)
        # Runs whose kernel died: close them as KILLED with the energy of the last live flush.
        for uid, start in open_runs.items():
            live = last_live.get(uid, {})
            end = {
                "type": "run_end", "uid": uid, "status": "KILLED", "t_ms": int(time.time() * 1000),
                "metrics": [[k, live[k2], 0, int(time.time() * 1000)]
                            for k, k2 in (("energy_j", "live_energy_j"), ("duration_s", "step"))
                            if k2 in live],
                "tags": {"energy.closed_by": "recovery: kernel died; energy up to the last live flush"},
            }
            seq = old.append(end)
            if not self._apply_safely(end, in_doubt=True):
                return
            old.ack(seq)


_REJECTION_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                    "BAD_REQUEST", "INVALID_STATE"}


def _is_rejection(exc: Exception) -> bool:
    """The backend answered and said no (as opposed to not answering)."""
    if isinstance(exc, LookupError):  # our own: the run this event belongs to was never created
        return True
    code = getattr(exc, "error_code", None)
    return isinstance(code, str) and code in _REJECTION_CODES


def describe_error(exc: BaseException) -> str:
    """One line for the user: the innermost cause of ``exc`` (``OperationalError: database is locked``).

    MLflow wraps store and HTTP errors several layers deep, with SQL statements and retry
    details in the outer messages; the root cause is what says what is wrong.
    """
    root, seen = exc, {id(exc)}
    while True:
        nxt = root.__cause__ or (None if root.__suppress_context__ else root.__context__)
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        root = nxt
    text = next((line.strip() for line in str(root).splitlines() if line.strip()), "")
    return f"{type(root).__name__}: {text}"[:300] if text else type(root).__name__


class _NotFromWriterThread(logging.Filter):
    """Drops MLflow's, SQLAlchemy's and urllib3's log records made on the writer thread.

    The writer retries every failed write and reports an outage once, itself
    (Tracker.backend_warning); the libraries' own per-attempt warnings and tracebacks would
    otherwise be printed under whatever cell is running, once per retry.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName not in (THREAD_NAME, JOURNAL_THREAD_NAME)


_MUTE = _NotFromWriterThread()


def _mute_library_logs_on_writer_thread() -> None:
    """Attach :data:`_MUTE` to the handlers MLflow installs and to urllib3's retry logger (idempotent)."""
    for name in ("mlflow", "sqlalchemy.engine", "alembic"):
        for handler in logging.getLogger(name).handlers:
            if _MUTE not in handler.filters:
                handler.addFilter(_MUTE)
    pool = logging.getLogger("urllib3.connectionpool")
    if _MUTE not in pool.filters:
        pool.addFilter(_MUTE)


@contextlib.contextmanager
def _host_lock(key: str):
    """An exclusive lock shared by every process of this user on this host, named by ``key``."""
    import fcntl
    import hashlib
    import os

    from .paths import open_private, private_dir

    path = private_dir("locks") / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")
    fd = open_private(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _SweepState:
    """What this writer knows of one sweep's children, so that a run costs no full listing.

    ``children`` maps each child run id seen to its final ``energy_j`` (``None`` while running
    or finished without energy).  ``points`` is how many ``sweep_energy_j`` points the parent
    had after this writer's last look or write: when MLflow has another number, another writer
    (a second kernel, a worker process) touched the sweep and the children are listed again.
    ``logged`` holds the ``(step, value)`` of those points at the last look.
    """

    __slots__ = ("children", "points", "logged", "last_index")

    def __init__(self) -> None:
        self.children: dict[str, float | None] = {}
        self.points = 0
        self.logged: set[tuple[int, float]] = set()
        self.last_index = 0  # the highest energy.run_index seen: a deleted child keeps its number

    def saw(self, run) -> None:
        try:
            self.last_index = max(self.last_index, int(run.data.tags.get("energy.run_index", 0)))
        except ValueError:
            pass

    def finished(self) -> list[float]:
        return [e for e in self.children.values() if e is not None]


class Backend:
    """MLflow operations for one (tracking URI, experiment), imported lazily in the writer thread."""

    def __init__(self, tracking_uri: str, experiment: str):
        from .query import mlflow_client_class

        client_class = mlflow_client_class()  # the slow import happens here, off the cell's path

        # MLflow announces creating a new sqlite store's tables at INFO; from this thread that
        # text would land in whatever cell is running.
        for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
            logging.getLogger(name).setLevel(logging.WARNING)
        _mute_library_logs_on_writer_thread()

        self.tracking_uri = tracking_uri
        self.experiment = experiment
        # Two kernels that create a new sqlite store at once race in MLflow's schema migration;
        # the first touch of a store is serialised across this host's processes.
        with _host_lock(f"store|{tracking_uri}"):
            self.client = client_class(tracking_uri=tracking_uri)
            self.client.search_experiments(max_results=1)
        self._experiment_id: str | None = None
        self.run_ids: dict[str, str] = {}
        self._host_tags: dict[str, str] | None = None
        self._sweeps: dict[str, _SweepState] = {}

    @property
    def host_tags(self) -> dict[str, str]:
        if self._host_tags is None:
            from .hostinfo import host_tags

            self._host_tags = host_tags()
        return self._host_tags

    # ---- helpers -----------------------------------------------------------------------------
    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                from mlflow.exceptions import MlflowException

                try:
                    self._experiment_id = self.client.create_experiment(self.experiment)
                except MlflowException:  # created meanwhile by another kernel
                    self._experiment_id = self.client.get_experiment_by_name(self.experiment).experiment_id
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    def _find_by_uid(self, uid: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`energy.uid` = '{uid}'",
                                       max_results=1)
        return runs[0].info.run_id if runs else None

    def run_id(self, uid: str) -> str:
        run_id = self.run_ids.get(uid)
        if run_id is None:
            run_id = self._find_by_uid(uid)
            if run_id is None:
                raise LookupError(f"no MLflow run carries energy.uid={uid}")
            self.run_ids[uid] = run_id
        return run_id

    def _metrics(self, rows, run_id: str | None, in_doubt: bool):
        from mlflow.entities import Metric

        metrics = [Metric(str(k), float(v), int(t), int(step)) for k, v, step, t in rows]
        if in_doubt and run_id is not None and metrics:
            present: set[tuple[str, int, int]] = set()
            for key in {m.key for m in metrics}:
                present |= {(key, m.step, m.timestamp) for m in self.client.get_metric_history(run_id, key)}
            metrics = [m for m in metrics if (m.key, m.step, m.timestamp) not in present]
        return metrics

    # ---- operations ----------------------------------------------------------------------------
    def start(self, event: dict[str, Any], context: dict[str, dict[str, Any]], in_doubt: bool) -> None:
        uid = event["uid"]
        if uid in self.run_ids:
            return
        if event["type"] == "sweep_start":
            # Kernels on this host that start the same sweep at once must end up in one parent run.
            with _host_lock(f"{self.tracking_uri}|{self.experiment}|{event['name']}"):
                run_id = self._join_sweep(event)
                if run_id is None:
                    run_id = self._create(event, context, in_doubt)
                self.run_ids[uid] = run_id
            return
        self.run_ids[uid] = self._create(event, context, in_doubt)

    def _create(self, event: dict[str, Any], context: dict[str, dict[str, Any]], in_doubt: bool) -> str:
        uid = event["uid"]
        existing = self._find_by_uid(uid) if in_doubt else None
        if existing is not None:
            # Created before the failure, but its params may not have been logged yet.
            self._log_start_data(existing, event, in_doubt=True)
            return existing
        tags = {**self.host_tags, **(event.get("tags") or {})}
        tags["energy.uid"] = uid
        tags["energy.kind"] = "sweep" if event["type"] == "sweep_start" else "run"
        if event["type"] == "sweep_start":
            tags["energy.sweep"] = event["name"]
            if event.get("planned") is not None:
                tags["energy.planned"] = str(event["planned"])
            if event.get("budget_j") is not None:
                tags["energy.budget_j"] = repr(float(event["budget_j"]))
                tags["energy.budget_state"] = "ok"
        if event.get("sweep_uid"):
            # Counting the sweep's children and creating this one is one step for every writer
            # on this host: two runs of one sweep never get the same energy.run_index.
            with self.sweep_lock(event["sweep_uid"]):
                parent = self.run_id(event["sweep_uid"])
                tags["mlflow.parentRunId"] = parent
                tags["energy.sweep"] = context[event["sweep_uid"]]["name"]
                state = self._sweep_state(parent, running=True)
                index = max(state.last_index, len(state.children)) + 1
                tags["energy.run_index"] = str(index)
                run_id = self._create_run(event, tags)
                state.children[run_id] = None
                state.last_index = max(state.last_index, index)
        else:
            run_id = self._create_run(event, tags)
        self._log_start_data(run_id, event, in_doubt=False)
        return run_id

    def _create_run(self, event: dict[str, Any], tags: dict[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, start_time=event["t_ms"],
                                     tags={k: str(v) for k, v in tags.items()}, run_name=event["name"])
        return run.info.run_id

    def sweep_lock(self, sweep_uid: str):
        """The host-wide lock under which this sweep's children are counted, created and ended."""
        return _host_lock(f"sweep|{self.tracking_uri}|{self.experiment}|{self.run_id(sweep_uid)}")

    def _log_start_data(self, run_id: str, event: dict[str, Any], in_doubt: bool) -> None:
        """The params (and a sweep's budget) of a new run; safe to repeat (same values, deduplicated points).

        A param MLflow refuses outright (``INVALID_PARAMETER_VALUE``: a key with characters it
        does not store) would fail every retry and hold back every later event, so it is
        recorded, with MLflow's reason, in the tag ``energy.params_rejected`` instead.
        """
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        params = [Param(str(k), str(v)) for k, v in (event.get("params") or {}).items()]
        metrics = []
        if event["type"] == "sweep_start" and event.get("budget_j") is not None:
            metrics = self._metrics([["sweep_budget_j", event["budget_j"], 0, event["t_ms"]]], run_id, in_doubt)
        if not (params or metrics):
            return
        try:
            self.client.log_batch(run_id, metrics=metrics, params=params)
            return
        except MlflowException as exc:
            if exc.error_code != "INVALID_PARAMETER_VALUE" or not params:
                raise
        rejected = []
        for param in params:
            try:
                self.client.log_batch(run_id, params=[param])
            except MlflowException as exc:
                if exc.error_code != "INVALID_PARAMETER_VALUE":
                    raise
                rejected.append(f"{param.key}={param.value}: {describe_error(exc)}")
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)
        if rejected:
            log.warning("ipython-energy: MLflow refused param(s) %s", "; ".join(rejected))
            self.client.set_tag(run_id, "energy.params_rejected", "; ".join(rejected)[:5000])

    def _join_sweep(self, event: dict[str, Any]) -> str | None:
        """A running sweep of the same name in this experiment (another kernel's), if any."""
        name = event["name"].replace("'", "\\'")
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`energy.kind` = 'sweep' and tags.`energy.sweep` = '{name}' "
                          f"and attributes.status = 'RUNNING'",
            max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    def _children(self, parent_run_id: str):
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id],
                                           filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                           max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def log_chart(self, parent_run_id: str) -> None:
        """Save the sweep's chart (the sidebar's and ``%energy chart``'s definition) as ``energy_sweep.html``."""
        from .charts import sweep_html
        from .query import build_sweep_data, run_row, sweep_header

        header = sweep_header(self.client.get_run(parent_run_id))
        data = build_sweep_data(header, [run_row(r) for r in self._children(parent_run_id)])
        self.client.log_text(parent_run_id, sweep_html(data), "energy_sweep.html")

    def _sweep_state(self, parent_run_id: str, *, running: bool = False) -> _SweepState:
        """The sweep's children as far as this writer can know them without listing them all.

        Listed in full the first time, and again whenever the parent's ``sweep_energy_j``
        history has points this writer did not see (another writer finished runs).  With
        ``running``, the sweep's RUNNING children are looked up too (a short list), so that
        runs another writer started since are counted for ``energy.run_index``.
        """
        history = self.client.get_metric_history(parent_run_id, "sweep_energy_j")
        points = len(history)
        state = self._sweeps.get(parent_run_id)
        if state is None or state.points != points:
            state = _SweepState()
            for r in self._children(parent_run_id):
                done = r.info.status in RUN_STATUSES and "energy_j" in r.data.metrics
                state.children[r.info.run_id] = r.data.metrics["energy_j"] if done else None
                state.saw(r)
            state.points = points
            self._sweeps[parent_run_id] = state
        elif running:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'",
                max_results=1000)
            for r in page:
                state.children.setdefault(r.info.run_id, None)
                state.saw(r)
        state.logged = {(m.step, m.value) for m in history}
        return state

    def log_metrics(self, uid: str, rows, in_doubt: bool) -> None:
        run_id = self.run_id(uid)
        metrics = self._metrics(rows, run_id, in_doubt)
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def end_run(self, event: dict[str, Any], in_doubt: bool) -> None:
        from mlflow.entities import RunTag

        run_id = self.run_id(event["uid"])
        metrics = self._metrics(event.get("metrics") or [], run_id, in_doubt)
        tags = [RunTag(str(k), str(v)[:5000]) for k, v in (event.get("tags") or {}).items()]
        if metrics or tags:
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self.client.set_terminated(run_id, status=event["status"], end_time=event["t_ms"])
        if event.get("delete"):
            # A cell's own run that a real run opened inside the cell took the place of.
            self.client.delete_run(run_id)

    def forget_child(self, sweep_uid: str, uid: str) -> None:
        """A deleted child (a cell's run superseded by a real run) no longer counts for the sweep."""
        state = self._sweeps.get(self.run_id(sweep_uid))
        if state is not None:
            state.children.pop(self.run_id(uid), None)

    def update_sweep(self, sweep_uid: str, context: dict[str, dict[str, Any]], in_doubt: bool,
                     ended: dict[str, Any] | None = None) -> None:
        """Recompute the sweep's totals from its finished children, as MLflow has them.

        ``ended`` is the run_end event that triggered this: its run's final ``energy_j`` is
        taken from the event, and the other children from :meth:`_sweep_state`, so a run costs
        one read of the parent's history rather than a listing of every child.
        """
        from mlflow.entities import RunTag

        parent = self.run_id(sweep_uid)
        if in_doubt:
            self._sweeps.pop(parent, None)  # a failed write may have landed: look again
        state = self._sweep_state(parent)
        if ended is not None:
            run_id = self.run_id(ended["uid"])
            energy = [row[1] for row in ended.get("metrics") or [] if row[0] == "energy_j"]
            if energy and ended.get("status") in RUN_STATUSES:
                state.children[run_id] = float(energy[-1])
            elif run_id not in state.children:
                state.children[run_id] = None
        done = state.finished()
        n = len(done)
        if n == 0:
            return
        total = math.fsum(done)  # exactly rounded, so whatever order the children come in
        now = int(time.time() * 1000)
        rows = [["sweep_energy_j", total, n, now], ["sweep_runs", n, n, now],
                ["sweep_mean_energy_per_run_j", total / n, n, now]]
        start = context.get(sweep_uid, {})
        planned = start.get("planned")
        if planned:
            rows.append(["sweep_forecast_energy_j", total / n * max(int(planned), n), n, now])
        tags = []
        budget = start.get("budget_j")
        if budget is not None:
            tags.append(RunTag("energy.budget_state", "over" if total > float(budget) else "ok"))
        if (n, total) in state.logged:
            rows = []  # this exact total was logged already (a replay, or another writer)
        metrics = self._metrics(rows, parent, False)
        if metrics or tags:
            self.client.log_batch(parent, metrics=metrics, tags=tags)
            if metrics:
                state.points += 1

    def end_sweep(self, event: dict[str, Any], context: dict[str, dict[str, Any]]) -> None:
        run_id = self.run_id(event["uid"])
        self.log_chart(run_id)
        # Only the kernel that created the sweep closes it; others joined it and leave it open.
        if self.client.get_run(run_id).data.tags.get("energy.uid") == event["uid"]:
            self.client.set_terminated(run_id, status=event.get("status", "FINISHED"), end_time=event["t_ms"])
