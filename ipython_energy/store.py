"""The MLflow store adapter: runs, sweeps and their roll-up in one (tracking URI, experiment).

The writer hands it one event at a time (:mod:`ipython_energy.events`) on its own thread; every
operation is safe to repeat when its outcome is in doubt (a request failed after it may have
reached the server): runs are found again by their ``energy.uid`` tag and metric points
already present are not logged twice.  A sweep's run numbers and totals take no lock: they are
claimed and derived in MLflow itself (:mod:`ipython_energy.ledger`), so that writers on several
hosts, sharing nothing but the tracking server, keep one ledger.

MLflow is imported here, lazily, on the writer's thread; its log records made on that thread
are muted (the writer reports an outage once, itself).
"""

from __future__ import annotations

import contextlib
import os
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from . import layout, rollup
from .ledger import (AFTER_STEP_TAG, AFTER_TAG, INDEX_PARAM, SUPERSEDED_TAG, Ledger, Step, entry, lowest_free,
                     settled_entry)
from .transport import (THREAD_NAME, Pace, describe_error, is_http, mlflow_client_class,
                        mute_library_logs_on_writer_thread, writer_client)
from .events import Event, Metrics, RunEnd, RunStart, StartEvent, SweepEnd, SweepStart, SweepUpdate

log = logging.getLogger("ipython_energy")

#: Marks the experiment as training runs for MLflow's UI (3.x), which in its Model training mode
#: then opens it in its runs table (its GenAI mode, where a new browser starts, opens every
#: experiment in an overview of traces: README.md's MLflow steps).  New experiments get it,
#: existing ones only when they have no kind.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

#: The tag prefix of a sweep's members on its parent: ``energy.member.<sweep uid>`` = RUNNING or how it ended.
MEMBER_TAG = "energy.member."

#: On a sweep's parent: it is the one every writer keeps (see MlflowStore._sweep_parent).
ELECTED_TAG = "energy.elected"

#: How long a writer that created a sweep's parent waits before it looks for others created at the
#: same instant (the longest a create may take for the election to hold; docs/reliability.md).
ELECTION_SETTLE_S = 2.0

#: Run numbers a writer tries one after another, each refused as taken, before it reads the
#: parent's claims again (MlflowStore.claim_index): writers that start runs at once take
#: neighbouring numbers, and a read of the parent grows with the sweep.
CLAIM_TRIES_BEFORE_READ = 4

#: A function from a sweep's data (rollup.build_sweep_data) to the HTML saved as ``energy_sweep.html``.
ChartRenderer = Callable[[Mapping[str, Any]], str]

#: Requests in flight at once while a backlog of whole runs goes to a tracking server
#: (MlflowStore.apply_runs); a local store (sqlite) takes them one after another.
BACKLOG_WORKERS = 6


def in_parallel(call: Callable[[Any], Any], items, workers: int) -> list:
    """``call(item)`` for every item, up to ``workers`` at once; the results in the items' order.

    The threads bear the writer thread's name (its library logs stay muted) and are daemons: a
    request that hangs never holds up the interpreter's exit.  Every call has returned when this
    returns; the first error, if any, is then raised.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [call(item) for item in items]
    results: list = [None] * len(items)
    errors: list[BaseException] = []
    todo = iter(range(len(items)))
    lock = threading.Lock()

    def work() -> None:
        while not errors:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                results[i] = call(items[i])
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                errors.append(exc)

    threads = [threading.Thread(target=work, name=THREAD_NAME, daemon=True) for _ in range(min(workers, len(items)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@contextlib.contextmanager
def host_lock(key: str):
    """An exclusive lock shared by every process of this user on this host, named by ``key``.

    Only for what is local to a host: the first touch of a sqlite file (see MlflowStore).  A
    sweep's ledger never takes it: writers on other hosts would not see it."""
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


def is_group(run) -> bool:
    """Whether an MLflow run is the parent run of a group of repeats: a child of a sweep that is no
    run of it (docs/metrics.md, "Groups of repeats")."""
    return run.data.tags.get("energy.kind") == "group"


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (created if missing), held for the block."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _sweep_lock_path(tracking_uri: str) -> Path | None:
    """For a sqlite store, the lock file beside it that every process writing it on this host
    shares, whatever its IPYTHON_ENERGY_HOME (a sqlite file has all its writers on one host);
    None for other stores."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = Path(tracking_uri[len("sqlite:///"):])
    return path.with_name(path.name + ".ipython-energy.lock")


class MlflowStore:
    """MLflow operations for one (tracking URI, experiment), imported lazily in the writer thread."""

    def __init__(self, tracking_uri: str, experiment: str, render_chart: ChartRenderer | None = None,
                 pace: Pace | None = None):
        mlflow_client_class()  # the slow import happens here, off the cell's path

        # MLflow announces creating a new sqlite store's tables at INFO; from this thread that
        # text would land in whatever cell is running.
        for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
            logging.getLogger(name).setLevel(logging.WARNING)
        mute_library_logs_on_writer_thread()

        self.tracking_uri = tracking_uri
        self.experiment = experiment
        # Two kernels that create a new sqlite store at once race in MLflow's schema migration;
        # the first touch of a store is serialised across this host's processes.
        with host_lock(f"store|{tracking_uri}"):
            self.client = writer_client(tracking_uri, pace)
            self.client.search_experiments(max_results=1)
        self._experiment_id: str | None = None
        self.run_ids: dict[str, str] = {}
        self._host_tags: dict[str, str] | None = None
        self._sweeps: dict[str, Ledger] = {}  # parent run id -> this writer's view of its ledger
        #: parent run id -> the sweep's last step this writer derived from MLflow (all its members)
        self.latest: dict[str, Step] = {}
        # A sqlite store has every writer on this host: a lock beside its file around finding or
        # creating a sweep's parent makes the parent one, with no election wait.
        self.sweep_lock_path = _sweep_lock_path(tracking_uri)
        self.settle_s = 0.0 if self.sweep_lock_path is not None else ELECTION_SETTLE_S
        self._starts: Mapping[str, StartEvent] = {}  # the writer's uid -> start event (see apply)
        self.render_chart = render_chart
        # A backlog's progress (apply_runs), so that its retry after a failure resumes: the runs
        # created (uid -> run id), those whose creation got no answer, those ended.
        self._created: dict[str, str] = {}
        self._unsure: set[str] = set()
        self._finished: set[str] = set()

    @property
    def host_tags(self) -> dict[str, str]:
        if self._host_tags is None:
            from .hostinfo import host_tags

            self._host_tags = host_tags()
        return self._host_tags

    # ---- helpers -----------------------------------------------------------------------------
    @property
    def experiment_id(self) -> str:
        """The experiment's id; created if missing, with :data:`EXPERIMENT_KIND` (see there)."""
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                from mlflow.exceptions import MlflowException

                try:
                    self._experiment_id = self.client.create_experiment(self.experiment, tags=dict([EXPERIMENT_KIND]))
                    return self._experiment_id
                except MlflowException:  # created meanwhile by another kernel
                    exp = self.client.get_experiment_by_name(self.experiment)
            self._experiment_id = exp.experiment_id
            if EXPERIMENT_KIND[0] not in exp.tags:  # a kind the user chose is theirs
                self.client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return self._experiment_id

    def _find_by_uid(self, uid: str) -> str | None:
        run = self._find_run_by_uid(uid)
        return run.info.run_id if run is not None else None

    def _find_run_by_uid(self, uid: str):
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`energy.uid` = '{uid}'",
                                       max_results=1)
        return runs[0] if runs else None

    def forget(self, uid: str) -> None:
        """Drop what this store keeps of ``uid`` (a run or sweep no later event refers to)."""
        run_id = self.run_ids.pop(uid, None)
        if run_id is not None:
            self._sweeps.pop(run_id, None)
            self.latest.pop(run_id, None)
        self._forget_backlog(uid)

    def _forget_backlog(self, uid: str) -> None:
        self._created.pop(uid, None)
        self._unsure.discard(uid)
        self._finished.discard(uid)

    def sweep_view(self, uid: str) -> "Step | None":
        """The last step of the sweep ``uid`` (this process's SweepStart) that this writer derived
        from MLflow, every member's runs included; None until it has derived one."""
        run_id = self.run_ids.get(uid)
        return self.latest.get(run_id) if run_id is not None else None

    def run_id(self, uid: str) -> str:
        """The MLflow run of ``uid``: found by its ``energy.uid`` tag, or, for a sweep this process
        joined (its parent carries another process's uid), by the sweep's name in the experiment."""
        run_id = self.run_ids.get(uid)
        if run_id is None:
            run_id = self._find_by_uid(uid)
            start = self._starts.get(uid)
            if run_id is None and isinstance(start, SweepStart):
                parent = self._find_sweep(start.name)
                run_id = None if parent is None else parent.info.run_id
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
    def start(self, event: StartEvent, context: Mapping[str, StartEvent], in_doubt: bool) -> None:
        uid = event.uid
        if uid in self.run_ids:
            return
        if isinstance(event, SweepStart):
            if self.sweep_lock_path is not None:
                with _file_lock(self.sweep_lock_path):
                    self.run_ids[uid] = self._sweep_parent(event, context, in_doubt)
            else:
                self.run_ids[uid] = self._sweep_parent(event, context, in_doubt)
            return
        self.run_ids[uid] = self._create(event, context, in_doubt)

    def _sweep_parent(self, event: SweepStart, context: Mapping[str, StartEvent], in_doubt: bool) -> str:
        """The parent run of the sweep ``event.name``: joined if there is one, else created, once
        for every writer on every host (the election, docs/reliability.md "A sweep across machines").

        A parent is *elected* (tag ``energy.elected``) once its creator has looked again after
        :attr:`settle_s`: by then every parent created by a writer that also found none is
        listed, and every such writer keeps the same one (:meth:`_find_sweep`'s order, a function
        of the list alone) and deletes its own if it lost.  A writer that finds only parents not
        yet elected looks again after :attr:`settle_s` too, so that it joins the one kept.
        """
        searched = time.monotonic()
        parent = self._find_sweep(event.name)
        if parent is not None and parent.data.tags.get(ELECTED_TAG) != "true" and parent.data.tags.get(
                "energy.uid") != event.uid:
            time.sleep(self.settle_s)
            parent = self._find_sweep(event.name)
        if parent is not None and parent.data.tags.get("energy.uid") != event.uid:
            self._join_sweep(parent, event)
            return parent.info.run_id
        own = parent.info.run_id if parent is not None else self._create(event, context, in_doubt)
        took = time.monotonic() - searched
        time.sleep(self.settle_s)
        winner = self._find_sweep(event.name)
        if self.sweep_lock_path is None and took > self.settle_s:  # under the lock no wait is needed
            log.warning("ipython-energy: creating the parent of sweep %r took %.1f s, longer than the "
                        "%.1f s other hosts wait for it: two parents may remain", event.name, took, self.settle_s)
        if winner is None or winner.info.run_id == own:
            self.client.set_tag(own, ELECTED_TAG, "true")
            return own
        # Another writer's parent is the sweep: this one has no child yet, and goes.
        self.client.delete_run(own)
        self._join_sweep(winner, event)
        return winner.info.run_id

    def _create(self, event: StartEvent, context: Mapping[str, StartEvent], in_doubt: bool) -> str:
        uid = event.uid
        found = self._find_run_by_uid(uid) if in_doubt else None
        if found is not None:
            # Created before the failure (its answer lost), but its params may not have been
            # logged yet, and this writer has not counted it among its sweep's children.
            existing = found.info.run_id
            index_tags = {}
            if isinstance(event, RunStart) and event.sweep_uid:
                index = self.claim_index(found.data.tags["mlflow.parentRunId"], existing, in_doubt=True)
                index_tags["energy.run_index"] = str(index)
            self._log_start_data(existing, event, in_doubt=True, tags=index_tags)
            return existing
        tags = self._new_run_tags(event, context)
        index_tags = {}
        run_id = self._create_run(event, tags)
        if isinstance(event, RunStart) and event.sweep_uid:
            index_tags["energy.run_index"] = str(self.claim_index(tags["mlflow.parentRunId"], run_id, in_doubt=False))
        self._log_start_data(run_id, event, in_doubt=False, tags=index_tags)
        return run_id

    def _new_run_tags(self, event: StartEvent, context: Mapping[str, StartEvent]) -> dict[str, str]:
        """The tags a new run is created with (a sweep's child: its parent and its sweep's name)."""
        uid = event.uid
        tags = dict(self.host_tags)
        if isinstance(event, SweepStart):
            tags.update({"energy.uid": uid, "energy.kind": "sweep", "energy.sweep": event.name,
                         MEMBER_TAG + uid: "RUNNING"})
            if event.planned is not None:
                tags["energy.planned"] = str(event.planned)
            if event.budget_j is not None:
                tags["energy.budget_j"] = repr(float(event.budget_j))
                tags["energy.budget_state"] = "ok"
        else:
            tags.update(event.tags)
            tags.update({"energy.uid": uid, "energy.kind": event.kind})
            if event.parent_uid:
                # A run nested in another (its energy is in that one's): the enclosing run's child,
                # never the sweep's, so the sweep's totals count it once, in the enclosing run.
                # A group's parent run under a sweep is the sweep's child but no run of it (is_group).
                tags["mlflow.parentRunId"] = self.run_id(event.parent_uid)
        if isinstance(event, RunStart) and event.sweep_uid:
            tags["mlflow.parentRunId"] = self.run_id(event.sweep_uid)
            tags["energy.sweep"] = context[event.sweep_uid].name
        return tags

    def _create_run(self, event: StartEvent, tags: dict[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, start_time=event.t_ms,
                                     tags={k: str(v) for k, v in tags.items()}, run_name=event.name)
        return run.info.run_id

    def claim_index(self, parent_run_id: str, run_id: str, in_doubt: bool) -> int:
        """The child's run number in its sweep: claimed on the parent as ``energy.index.<k>`` =
        ``run_id`` for the lowest ``k`` free (:mod:`ipython_energy.ledger`); the same number
        again for a child that has one (a retry, or its end replayed by another process)."""
        from mlflow.exceptions import MlflowException

        ledger = self._ledger(parent_run_id)
        if in_doubt or not ledger.claims:
            ledger.read_parent(self.client.get_run(parent_run_id))
        taken: set[int] = set()  # refused here: other writers' children have them
        while True:
            index = ledger.index_of(run_id)
            if index is not None:
                return index
            k = lowest_free(ledger.claims, taken)
            try:
                self.client.log_param(parent_run_id, INDEX_PARAM + str(k), run_id)
            except MlflowException as exc:
                # A different value there (or, on PostgreSQL, an insert that lost the race to it).
                if exc.error_code not in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
                    raise
                # Another writer's child has k: try the next number.  Reading the parent costs a
                # param per run of the sweep, so only a writer that keeps losing (far behind
                # the others) reads the claims as they are now.
                taken.add(k)
                if len(taken) % CLAIM_TRIES_BEFORE_READ == 0:
                    ledger.read_parent(self.client.get_run(parent_run_id))
                continue
            ledger.claims[k] = run_id
            return k

    def claim_indexes(self, parent_run_id: str, run_ids: list[str]) -> list[int]:
        """Run numbers for several new children at once, in their order: the lowest free numbers,
        claimed in one ``log_batch`` of ``energy.index.<k>`` params on the parent.

        MLflow writes a batch's params all or none: one number taken meanwhile by another writer
        has the whole batch refused (``INVALID_PARAMETER_VALUE``, or ``BAD_REQUEST`` when two
        inserts race in the database), and the children then claim one by one
        (:meth:`claim_index`) from the parent's claims as they are now.  A batch resent after a
        lost answer writes the same values: accepted, nothing new.
        """
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        ledger = self._ledger(parent_run_id)
        if not ledger.claims:
            ledger.read_parent(self.client.get_run(parent_run_id))
        free, k = [], 1
        while len(free) < len(run_ids):
            if k not in ledger.claims:
                free.append(k)
            k += 1
        try:
            self.client.log_batch(parent_run_id, params=[Param(INDEX_PARAM + str(k), run_id)
                                                         for k, run_id in zip(free, run_ids)])
        except MlflowException as exc:
            if exc.error_code not in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
                raise
            ledger.read_parent(self.client.get_run(parent_run_id))
            return [self.claim_index(parent_run_id, run_id, in_doubt=False) for run_id in run_ids]
        ledger.claims.update(zip(free, run_ids))
        return free

    def _ledger(self, parent_run_id: str) -> Ledger:
        ledger = self._sweeps.get(parent_run_id)
        if ledger is None:
            ledger = self._sweeps[parent_run_id] = Ledger()
        return ledger

    def _log_start_data(self, run_id: str, event: StartEvent, in_doubt: bool,
                        tags: Mapping[str, str] | None = None) -> None:
        """The params (and a sweep's budget, a child's run number) of a new run; safe to repeat
        (same values, deduplicated points).

        A param MLflow refuses outright (``INVALID_PARAMETER_VALUE``: a key with characters it
        does not store) would fail every retry and hold back every later event, so it is
        recorded, with MLflow's reason, in the tag ``energy.params_rejected`` instead.
        """
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        run_tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        params = [Param(str(k), str(v)) for k, v in event.params.items()] if isinstance(event, RunStart) else []
        metrics = []
        if isinstance(event, SweepStart) and event.budget_j is not None:
            metrics = self._metrics([("sweep_budget_j", event.budget_j, 0, event.t_ms)], run_id, in_doubt)
        if not (params or metrics or run_tags):
            return
        try:
            self.client.log_batch(run_id, metrics=metrics, params=params, tags=run_tags)
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
        if metrics or run_tags:
            self.client.log_batch(run_id, metrics=metrics, tags=run_tags)
        if rejected:
            log.warning("ipython-energy: MLflow refused param(s) %s", "; ".join(rejected))
            self.client.set_tag(run_id, "energy.params_rejected", "; ".join(rejected)[:5000])

    def _find_sweep(self, name: str):
        """The parent run of the sweep ``name`` in this experiment, whatever its status, or None.

        A sweep is its name in its experiment: every process that starts or joins it writes into
        one parent.  Should an earlier version have left several (it made a new parent for a
        sweep started again after it ended), the one started last is the sweep, for every writer.
        """
        quoted = name.replace("'", "\\'")
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`energy.kind` = 'sweep' and tags.`energy.sweep` = '{quoted}'",
            max_results=100, order_by=["attributes.start_time DESC"])
        return max(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)) if runs else None

    def _join_sweep(self, parent, event: SweepStart) -> None:
        """Become a member of an existing sweep: ``energy.member.<uid>`` = RUNNING on its parent,
        which is running again if it had been closed (the sweep goes on)."""
        tag = MEMBER_TAG + event.uid
        if parent.data.tags.get(tag) is None:  # a replayed join of a member that left stays left
            self.client.set_tag(parent.info.run_id, tag, "RUNNING")
            # Read after the tag is written: a member closing the parent meanwhile either sees
            # the tag, or closed it before this read (see end_sweep).
            if self.client.get_run(parent.info.run_id).info.status != "RUNNING":
                self.client.update_run(parent.info.run_id, status="RUNNING")

    def children(self, parent_run_id: str) -> list:
        """Every child run of the sweep ``parent_run_id`` (one listing, page by page), less the parent
        runs of groups of repeats (their repeats are the sweep's runs)."""
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id],
                                           filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                           max_results=1000, page_token=token)
            runs.extend(r for r in page if not is_group(r))
            token = page.token
            if not token:
                return runs

    def log_chart(self, parent_run_id: str) -> None:
        """Save the sweep's chart (the sidebar's and ``%energy chart``'s definition) as ``energy_sweep.html``."""
        if self.render_chart is None:
            return
        header = layout.sweep_header(self.client.get_run(parent_run_id))
        data = rollup.build_sweep_data(header, [layout.run_row(r) for r in self.children(parent_run_id)])
        self.client.log_text(parent_run_id, self.render_chart(data), "energy_sweep.html")

    def apply(self, event: Event, context: Mapping[str, StartEvent], in_doubt: bool, more: bool = False) -> None:
        """Apply one event; ``context`` maps every uid seen to its start event.

        ``more``: the writer has further events queued.  A run's end then leaves its sweep's
        totals for later (:meth:`settle`, once nothing is queued): catching up after an outage
        recounts each sweep once, not once per run.
        """
        self._starts = context
        if isinstance(event, (SweepStart, RunStart)):
            self.start(event, context, in_doubt)
        elif isinstance(event, Metrics):
            self.log_metrics(event.uid, event.rows, in_doubt)
        elif isinstance(event, RunEnd):
            self.end_run(event, in_doubt)
            start = context[event.uid]
            if isinstance(start, RunStart) and start.sweep_uid:
                self.child_ended(start, event, in_doubt)
        elif isinstance(event, SweepEnd):
            self.settle()
            if event.between_j is not None:
                self.leave_with(event)
            self.end_sweep(event)
        elif isinstance(event, SweepUpdate):
            self.settle()
            self.update_plan(event)
        else:
            raise TypeError(f"not an event: {event!r}")
        if not more:
            self.settle()

    def apply_runs(self, runs: list[tuple[RunStart, RunEnd]], context: Mapping[str, StartEvent]) -> None:
        """Apply whole runs (each a start and its end, with every metric queued between them), as
        a backlog after an outage has them: three requests a run, several in flight at once.

        Each run is created with its tags and start time; the sweep's children then claim their
        run numbers in one batch, in the given order (:meth:`claim_indexes`); each run's params,
        tags and metrics go in one ``log_batch``, then its end (``update_run``).  A run's own
        requests keep that order; those of different runs overlap (:func:`in_parallel`, up to
        :data:`BACKLOG_WORKERS` at once against a tracking server).

        Called again after a failure (the server went away mid-way), it resumes: a run created is
        not created again, a creation that got no answer is looked for by ``energy.uid`` first,
        numbers claimed stay claimed, and a run's batch and end, safe to repeat (the same points,
        params and status), are sent again unless they were answered.
        """
        from mlflow.entities import Metric, Param, RunTag

        self._starts = context
        # Runs a try before this one wrote whole (its sweep's totals failed after them, and the
        # backlog came back): done.  Their ends are in the ledger, or its recount looks them up.
        runs = [(start, end) for start, end in runs if start.uid not in self.run_ids]
        if not runs:
            return
        workers = BACKLOG_WORKERS if is_http(self.tracking_uri) else 1
        tags = [self._new_run_tags(start, context) for start, _end in runs]

        def create(i: int) -> str:
            uid = runs[i][0].uid
            if uid in self._unsure:
                found = self._find_by_uid(uid)
                if found is not None:
                    self._created[uid] = found
            if uid not in self._created:
                self._unsure.add(uid)
                self._created[uid] = self._create_run(runs[i][0], tags[i])
            self._unsure.discard(uid)
            return self._created[uid]

        run_ids = in_parallel(create, range(len(runs)), workers)
        parent = tags[0].get("mlflow.parentRunId") if runs[0][0].sweep_uid else None
        indexes: list[int | None] = [None] * len(runs)
        if parent:
            ledger = self._ledger(parent)
            unclaimed = [run_id for run_id in run_ids if ledger.index_of(run_id) is None]
            if unclaimed:
                self.claim_indexes(parent, unclaimed)
            indexes = [ledger.index_of(run_id) for run_id in run_ids]

        def finish(i: int) -> None:
            start, end = runs[i]
            if start.uid in self._finished:
                return
            run_tags = {k: str(v)[:5000] for k, v in end.tags.items()}
            if indexes[i] is not None:
                run_tags["energy.run_index"] = str(indexes[i])
            self.client.log_batch(run_ids[i], metrics=[Metric(str(k), float(v), int(t), int(step))
                                                       for k, v, step, t in end.rows],
                                  params=[Param(str(k), str(v)) for k, v in {**start.params, **end.params}.items()],
                                  tags=[RunTag(k, v) for k, v in run_tags.items()])
            self.client.set_terminated(run_ids[i], status=end.status, end_time=end.t_ms)
            self._finished.add(start.uid)

        in_parallel(finish, range(len(runs)), workers)
        for (start, end), run_id in zip(runs, run_ids):
            self.run_ids[start.uid] = run_id
            self._forget_backlog(start.uid)
            if parent:
                self.child_ended(start, end, in_doubt=False)
        if not (self._created or self._unsure or self._finished):
            # A dict keeps the table of its largest size: a backlog of 32 runs would leave one.
            self._created, self._unsure, self._finished = {}, set(), set()

    def leave_with(self, event: SweepEnd) -> None:
        """This member's time in the sweep after its last run joins the sweep's totals, from the
        last step it sees complete (:mod:`ipython_energy.ledger`); a replay keeps the first step."""
        from mlflow.entities import RunTag

        parent = self.run_id(event.uid)
        ledger = self._ledger(parent)
        self.update_sweep(parent)  # the prefix as it is now
        step = ledger.after.get(event.uid, (None, ledger.complete_steps()))[1]
        self.client.log_batch(parent, tags=[RunTag(AFTER_TAG + event.uid, repr(float(event.between_j))),
                                            RunTag(AFTER_STEP_TAG + event.uid, str(step))])
        self.update_sweep(parent)

    def child_ended(self, start: RunStart, event: RunEnd, in_doubt: bool) -> None:
        """Record the end of a sweep's child in this writer's ledger (from the event: no read)."""
        parent = self.run_id(start.sweep_uid)
        run_id = self.run_id(event.uid)
        ledger = self._ledger(parent)
        if ledger.index_of(run_id) is None:
            # Started by a process that died before its number was claimed, or a retry.
            self.claim_index(parent, run_id, in_doubt=True)
        tags = {**self.host_tags, **start.tags, **event.tags}
        metrics = {key: value for key, value, _s, _t in event.rows}
        counted = event.status in rollup.ENDED_STATUSES and not event.delete
        ledger.settled[run_id] = entry(metrics, tags, event.t_ms, counted=counted)
        ledger.dirty = True

    def settle(self) -> None:
        """Log the totals of every sweep whose figures this writer changed (see :meth:`update_sweep`)."""
        for parent, ledger in list(self._sweeps.items()):
            if ledger.dirty:
                self.update_sweep(parent)

    def update_sweep(self, parent: str, planned_budget: tuple[int | None, float | None] | None = None) -> None:
        """Log the sweep's ``sweep_*`` points that this writer can newly derive from MLflow.

        One read of the parent (claims, plan, after-time) and one search for the claimed children
        this writer has not seen end (``attributes.run_id IN``, deleted ones included); then the
        points of the ended prefix (:func:`ipython_energy.ledger.points`) not yet logged, in one
        batch.  Idempotent: another writer logs the same points, or more complete ones.
        """
        from mlflow.entities import RunTag
        from mlflow.entities.view_type import ViewType

        ledger = self._ledger(parent)
        run = self.client.get_run(parent)
        ledger.read_parent(run)
        waiting = ledger.waiting()
        for i in range(0, len(waiting), 100):
            ids = ", ".join(f"'{r}'" for r in waiting[i:i + 100])
            for child in self.client.search_runs([self.experiment_id], filter_string=f"attributes.run_id IN ({ids})",
                                                 run_view_type=ViewType.ALL, max_results=100):
                found = settled_entry(child)
                if found is not None:
                    ledger.settled[child.info.run_id] = found
        planned, budget = planned_budget or ledger.plan or (None, None)
        steps = ledger.steps(planned, budget)
        ledger.dirty = False
        if not steps:
            return
        rows = ledger.new_rows(steps)
        last = self.latest[parent] = steps[-1]
        tags = []
        if last.totals.budget_state == "over" and run.data.tags.get("energy.budget_state") != "over":
            tags.append(RunTag("energy.budget_state", "over"))  # a total only grows: never back to ok
        have = rollup.whole(run.data.tags.get("energy.overlapping_runs")) or 0
        if last.overlapping > have:
            tags.append(RunTag("energy.overlapping_runs", str(last.overlapping)))
        metrics = self._metrics(rows, parent, False)
        for i in range(0, max(len(metrics), 1), 1000):
            if metrics[i:i + 1000] or (tags and i == 0):
                self.client.log_batch(parent, metrics=metrics[i:i + 1000], tags=tags if i == 0 else [])
        ledger.wrote(rows)

    def log_metrics(self, uid: str, rows, in_doubt: bool) -> None:
        run_id = self.run_id(uid)
        metrics = self._metrics(rows, run_id, in_doubt)
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def end_run(self, event: RunEnd, in_doubt: bool) -> None:
        from mlflow.entities import Param, RunTag

        run_id = self.run_id(event.uid)
        metrics = self._metrics(event.rows, run_id, in_doubt)
        tags = [RunTag(str(k), str(v)[:5000]) for k, v in event.tags.items()]
        if event.delete and SUPERSEDED_TAG not in event.tags:
            # Marked before it ends, so that no writer counts it in its sweep meanwhile.
            tags.append(RunTag(SUPERSEDED_TAG, "true"))
        # Params given at the end (Run.annotate); logging the same value again is allowed, so a resend is harmless.
        params = [Param(str(k), str(v)) for k, v in event.params.items()]
        if metrics or tags or params:
            self.client.log_batch(run_id, metrics=metrics, tags=tags, params=params)
        self.client.set_terminated(run_id, status=event.status, end_time=event.t_ms)
        if event.delete:
            # A cell's own run that a real run opened inside the cell took the place of.
            self.client.delete_run(run_id)

    def update_plan(self, event: SweepUpdate) -> None:
        """A sweep's new ``planned`` / ``budget_j``: the parent's tags, ``sweep_budget_j``, and the
        forecast and budget state recomputed from the ended children.

        Safe to repeat: what the parent already shows (a tag's value, a metric's latest value) is
        not written again.  New points carry the time they are written, so that they are the latest
        at their step (the recounts' points carry their runs' end times).
        """
        from mlflow.entities import RunTag

        parent = self.run_id(event.uid)
        ledger = self._ledger(parent)
        ledger.read_parent(self.client.get_run(parent))
        steps = ledger.steps(event.planned, event.budget_j)
        rolled = steps[-1].totals if steps else rollup.totals([], event.planned, event.budget_j)
        run = self.client.get_run(parent)
        have_tags, have = run.data.tags, run.data.metrics
        want = {}
        if event.planned is not None:
            want["energy.planned"] = str(event.planned)
        if event.budget_j is not None:
            want["energy.budget_j"] = repr(float(event.budget_j))
            want["energy.budget_state"] = rolled.budget_state
        tags = [RunTag(k, v) for k, v in want.items() if have_tags.get(k) != v]
        now = int(time.time() * 1000)
        rows = []
        if event.budget_j is not None and have.get("sweep_budget_j") != float(event.budget_j):
            rows.append(("sweep_budget_j", float(event.budget_j), 0, now))
        if rolled.forecast_energy_j is not None and have.get("sweep_forecast_energy_j") != rolled.forecast_energy_j:
            rows.append(("sweep_forecast_energy_j", rolled.forecast_energy_j, rolled.runs, now))
        metrics = self._metrics(rows, parent, False)
        if metrics or tags:
            self.client.log_batch(parent, metrics=metrics, tags=tags)
        ledger.plan = (event.planned, event.budget_j)

    def end_sweep(self, event: SweepEnd) -> None:
        """This member leaves the sweep; the last member to leave closes the parent.

        Each process that started or joined the sweep is a member (``energy.member.<uid>``,
        RUNNING until it ends: then its status).  The parent is closed when no member is
        RUNNING: FAILED if a member failed, else FINISHED if one finished, else KILLED.  Every
        member writes its own tag before it reads them all, so of two members leaving at once
        the later read sees both and closes the parent (both may: the same status twice); a
        member that closed it reads the tags once more, and opens it again for one that joined
        meanwhile.  No lock: members on other hosts follow the same steps.  The closing member
        also saves the sweep's chart (``energy_sweep.html``).
        A dead session's members are ended by the recovery pass (KILLED), so a sweep never
        stays open because of a kernel that died.  A parent written by an earlier version has
        no member tags: its creator closes it, as then.
        """
        run_id = self.run_id(event.uid)
        tags = self.client.get_run(run_id).data.tags
        if not any(k.startswith(MEMBER_TAG) for k in tags):
            if tags.get("energy.uid") == event.uid:
                self.log_chart(run_id)
                self.client.set_terminated(run_id, status=event.status, end_time=event.t_ms)
            return
        self.client.set_tag(run_id, MEMBER_TAG + event.uid, event.status)
        members = self._members(run_id, event.uid, event.status)
        if "RUNNING" in members.values():
            return
        # The chart is drawn once, by the member that closes the sweep (it reads every child:
        # at a thousand runs, each member drawing it as it left cost minutes of requests).
        self.log_chart(run_id)
        statuses = set(members.values())
        status = "FAILED" if "FAILED" in statuses else "FINISHED" if "FINISHED" in statuses else "KILLED"
        self.client.set_terminated(run_id, status=status, end_time=event.t_ms)
        if "RUNNING" in self._members(run_id, event.uid, event.status).values():
            # A member joined while this one closed the parent, and may have seen it running
            # then (a join writes its tag before it reads the status): the sweep goes on.
            self.client.update_run(run_id, status="RUNNING")

    def _members(self, run_id: str, uid: str, status: str) -> dict[str, str]:
        """The parent's member tags as MLflow has them now, with this member's own ``status``."""
        members = {k: v for k, v in self.client.get_run(run_id).data.tags.items() if k.startswith(MEMBER_TAG)}
        members[MEMBER_TAG + uid] = status
        return members
