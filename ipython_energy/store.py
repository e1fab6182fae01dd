"""The MLflow store adapter: runs, sweeps and their roll-up in one (tracking URI, experiment).

The writer hands it one event at a time (:mod:`ipython_energy.events`) on its own thread; every
operation is safe to repeat when its outcome is in doubt (a request failed after it may have
reached the server): runs are found again by their ``energy.uid`` tag and metric points
already present are not logged twice.  Processes on one host that touch the same sweep take a
host-wide lock (:func:`host_lock`), so that run indices and totals never interleave.

MLflow is imported here, lazily, on the writer's thread; its log records made on that thread
are muted (the writer reports an outage once, itself).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, Mapping, NamedTuple

from . import layout, rollup
from .transport import Pace, describe_error, mlflow_client_class, mute_library_logs_on_writer_thread, writer_client
from .events import Event, Metrics, RunEnd, RunStart, StartEvent, SweepEnd, SweepStart, SweepUpdate

log = logging.getLogger("ipython_energy")

#: Marks the experiment as training runs for MLflow's UI (3.x), which in its Model training mode
#: then opens it in its runs table (its GenAI mode, where a new browser starts, opens every
#: experiment in an overview of traces: README.md's MLflow steps).  New experiments get it,
#: existing ones only when they have no kind.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

#: The tag prefix of a sweep's members on its parent: ``energy.member.<sweep uid>`` = RUNNING or how it ended.
MEMBER_TAG = "energy.member."

#: A function from a sweep's data (rollup.build_sweep_data) to the HTML saved as ``energy_sweep.html``.
ChartRenderer = Callable[[Mapping[str, Any]], str]


@contextlib.contextmanager
def host_lock(key: str):
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
    ``logged`` holds the ``(step, value)`` of those points at the last look.  ``plan`` is the
    sweep's ``(planned, budget_j)`` as the parent's tags had it at the last listing, or as this
    writer last set it (:meth:`MlflowStore.update_plan`).
    """

    __slots__ = ("children", "points", "logged", "last_index", "plan", "after")

    def __init__(self) -> None:
        self.children: dict[str, Child | None] = {}
        self.after: dict[str, float] = {}  # member uid -> its between-runs energy after its last run
        self.points = 0
        self.logged: set[tuple[int, float]] = set()
        self.last_index = 0  # the highest energy.run_index seen: a deleted child keeps its number
        self.plan: tuple[int | None, float | None] | None = None

    def saw(self, run) -> None:
        try:
            self.last_index = max(self.last_index, int(run.data.tags.get("energy.run_index", 0)))
        except ValueError:
            pass

    def finished(self) -> list["Child"]:
        return [c for c in self.children.values() if c is not None]

    def totals(self, planned: int | None, budget_j: float | None) -> rollup.SweepTotals:
        done = self.finished()
        return rollup.totals([c.share_j for c in done], planned, budget_j,
                             between_j=[c.gap_j for c in done] + list(self.after.values()))


class Child(NamedTuple):
    """A finished child of a sweep as the roll-up needs it.

    ``share_j``: its part of the sweep's energy in runs (``sweep_share_energy_j``: its energy
    less what it shared with overlapping runs); ``gap_j``: the between-runs energy its end
    carried (``sweep_gap_before_energy_j``).  A run written by an earlier version has neither:
    its share is its ``energy_j`` and its gap 0, as the sum of the runs was then.
    """

    energy_j: float
    share_j: float
    gap_j: float
    shares_devices: bool

    @classmethod
    def of(cls, metrics: Mapping[str, float], tags: Mapping[str, str]) -> "Child":
        energy = float(metrics["energy_j"])
        return cls(energy, float(metrics.get("sweep_share_energy_j", energy)),
                   float(metrics.get("sweep_gap_before_energy_j", 0.0)),
                   tags.get("energy.shares_devices") == "true")


def is_group(run) -> bool:
    """Whether an MLflow run is the parent run of a group of repeats: a child of a sweep that is no
    run of it (docs/metrics.md, "Groups of repeats")."""
    return run.data.tags.get("energy.kind") == "group"


#: The parent's tag prefix for a member's between-runs energy after its last run (its SweepEnd).
AFTER_TAG = "energy.between_after_j."


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
        self._sweeps: dict[str, _SweepState] = {}
        self._starts: Mapping[str, StartEvent] = {}  # the writer's uid -> start event (see apply)
        self.render_chart = render_chart

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
            # Kernels on this host that start the same sweep at once must end up in one parent run.
            with self._sweep_name_lock(event.name):
                parent = self._find_sweep(event.name)
                if parent is None:
                    run_id = self._create(event, context, in_doubt)
                else:
                    run_id = parent.info.run_id
                    self._join_sweep(parent, event)
                self.run_ids[uid] = run_id
            return
        self.run_ids[uid] = self._create(event, context, in_doubt)

    def _create(self, event: StartEvent, context: Mapping[str, StartEvent], in_doubt: bool) -> str:
        uid = event.uid
        found = self._find_run_by_uid(uid) if in_doubt else None
        if found is not None:
            # Created before the failure (its answer lost), but its params may not have been
            # logged yet, and this writer has not counted it among its sweep's children.
            existing = found.info.run_id
            parent = found.data.tags.get("mlflow.parentRunId")
            state = self._sweeps.get(parent) if parent and not is_group(found) else None
            if state is not None:
                state.children.setdefault(existing, None)
                state.saw(found)
            self._log_start_data(existing, event, in_doubt=True)
            return existing
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
            # Counting the sweep's children and creating this one is one step for every writer
            # on this host: two runs of one sweep never get the same energy.run_index.
            with self.sweep_lock(event.sweep_uid):
                parent = self.run_id(event.sweep_uid)
                tags["mlflow.parentRunId"] = parent
                tags["energy.sweep"] = context[event.sweep_uid].name
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

    def _create_run(self, event: StartEvent, tags: dict[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, start_time=event.t_ms,
                                     tags={k: str(v) for k, v in tags.items()}, run_name=event.name)
        return run.info.run_id

    def sweep_lock(self, sweep_uid: str):
        """The host-wide lock under which this sweep's children are counted, created and ended."""
        return host_lock(f"sweep|{self.tracking_uri}|{self.experiment}|{self.run_id(sweep_uid)}")

    def _log_start_data(self, run_id: str, event: StartEvent, in_doubt: bool) -> None:
        """The params (and a sweep's budget) of a new run; safe to repeat (same values, deduplicated points).

        A param MLflow refuses outright (``INVALID_PARAMETER_VALUE``: a key with characters it
        does not store) would fail every retry and hold back every later event, so it is
        recorded, with MLflow's reason, in the tag ``energy.params_rejected`` instead.
        """
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        params = [Param(str(k), str(v)) for k, v in event.params.items()] if isinstance(event, RunStart) else []
        metrics = []
        if isinstance(event, SweepStart) and event.budget_j is not None:
            metrics = self._metrics([("sweep_budget_j", event.budget_j, 0, event.t_ms)], run_id, in_doubt)
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

    def _sweep_name_lock(self, name: str):
        """The host-wide lock under which a sweep of this name is found or created, joined and left."""
        return host_lock(f"{self.tracking_uri}|{self.experiment}|{name}")

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
            if parent.info.status != "RUNNING":
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
            for r in self.children(parent_run_id):
                done = r.info.status in rollup.ENDED_STATUSES and "energy_j" in r.data.metrics
                state.children[r.info.run_id] = Child.of(r.data.metrics, r.data.tags) if done else None
                state.saw(r)
            state.points = points
            tags = self.client.get_run(parent_run_id).data.tags
            state.plan = (rollup.whole(tags.get("energy.planned")), rollup.number(tags.get("energy.budget_j")))
            state.after = {k[len(AFTER_TAG):]: v for k, v in ((k, rollup.number(v)) for k, v in tags.items()
                                                             if k.startswith(AFTER_TAG)) if v is not None}
            self._sweeps[parent_run_id] = state
        elif running:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'",
                max_results=1000)
            for r in (r for r in page if not is_group(r)):
                state.children.setdefault(r.info.run_id, None)
                state.saw(r)
        state.logged = {(m.step, m.value) for m in history}
        return state

    def apply(self, event: Event, context: Mapping[str, StartEvent], in_doubt: bool) -> None:
        """Apply one event; ``context`` maps every uid seen to its start event."""
        self._starts = context
        if isinstance(event, (SweepStart, RunStart)):
            self.start(event, context, in_doubt)
        elif isinstance(event, Metrics):
            self.log_metrics(event.uid, event.rows, in_doubt)
        elif isinstance(event, RunEnd):
            start = context[event.uid]
            sweep_uid = start.sweep_uid if isinstance(start, RunStart) else None
            if not sweep_uid:
                self.end_run(event, in_doubt)
                return
            # Ending a child and recounting its sweep is one step for every writer on this host,
            # so that another writer's count never falls between the two (see update_sweep).
            with self.sweep_lock(sweep_uid):
                self.end_run(event, in_doubt)
                if event.delete:
                    self.forget_child(sweep_uid, event.uid)
                else:
                    self.update_sweep(sweep_uid, context, in_doubt, ended=event)
        elif isinstance(event, SweepEnd):
            if event.between_j is not None:
                # This member's time in the sweep after its last run joins the sweep's total.
                with self.sweep_lock(event.uid):
                    self.client.set_tag(self.run_id(event.uid), AFTER_TAG + event.uid, repr(float(event.between_j)))
                    self._sweeps.pop(self.run_id(event.uid), None)  # the parent's tags changed: look again
                    self.update_sweep(event.uid, context, in_doubt)
            self.end_sweep(event)
        elif isinstance(event, SweepUpdate):
            self.update_plan(event)
        else:
            raise TypeError(f"not an event: {event!r}")

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
        # Params given at the end (Run.annotate); logging the same value again is allowed, so a resend is harmless.
        params = [Param(str(k), str(v)) for k, v in event.params.items()]
        if metrics or tags or params:
            self.client.log_batch(run_id, metrics=metrics, tags=tags, params=params)
        self.client.set_terminated(run_id, status=event.status, end_time=event.t_ms)
        if event.delete:
            # A cell's own run that a real run opened inside the cell took the place of.
            self.client.delete_run(run_id)

    def forget_child(self, sweep_uid: str, uid: str) -> None:
        """A deleted child (a cell's run superseded by a real run) no longer counts for the sweep."""
        state = self._sweeps.get(self.run_id(sweep_uid))
        if state is not None:
            state.children.pop(self.run_id(uid), None)

    def update_sweep(self, sweep_uid: str, context: Mapping[str, StartEvent], in_doubt: bool,
                     ended: RunEnd | None = None) -> None:
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
            run_id = self.run_id(ended.uid)
            energy = ended.energy_j()
            if energy is not None and ended.status in rollup.ENDED_STATUSES:
                state.children[run_id] = Child.of({key: value for key, value, _s, _t in ended.rows}, ended.tags)
            elif run_id not in state.children:
                state.children[run_id] = None
        if state.plan is not None:  # the parent's tags: the latest plan, whoever set it
            planned, budget = state.plan
        else:
            start = context.get(sweep_uid)
            planned = start.planned if isinstance(start, SweepStart) else None
            budget = start.budget_j if isinstance(start, SweepStart) else None
        rolled = state.totals(planned, budget)
        n, total = rolled.runs, rolled.energy_j
        if n == 0:
            return
        now = int(time.time() * 1000)
        rows = [("sweep_energy_j", total, n, now), ("sweep_runs", n, n, now),
                ("sweep_runs_energy_j", rolled.runs_energy_j, n, now),
                ("sweep_between_runs_energy_j", rolled.between_runs_energy_j, n, now),
                ("sweep_mean_energy_per_run_j", rolled.mean_energy_per_run_j, n, now)]
        if rolled.forecast_energy_j is not None:
            rows.append(("sweep_forecast_energy_j", rolled.forecast_energy_j, n, now))
        tags = [] if rolled.budget_state is None else [RunTag("energy.budget_state", rolled.budget_state)]
        overlapping = sum(1 for c in state.finished() if c.shares_devices)
        if overlapping:
            tags.append(RunTag("energy.overlapping_runs", str(overlapping)))
        if (n, total) in state.logged:
            rows = []  # this exact total was logged already (a replay, or another writer)
        elif ended is None:  # a member's time after its last run: the runs' figures have not changed
            rows = [row for row in rows if row[0] not in ("sweep_runs", "sweep_runs_energy_j")]
        metrics = self._metrics(rows, parent, False)
        if metrics or tags:
            self.client.log_batch(parent, metrics=metrics, tags=tags)
            if metrics:
                state.points += 1

    def update_plan(self, event: SweepUpdate) -> None:
        """A sweep's new ``planned`` / ``budget_j``: the parent's tags, ``sweep_budget_j``, and the
        forecast and budget state recomputed from the finished children.

        Safe to repeat: what the parent already shows (a tag's value, a metric's latest value) is
        not written again.  New points carry the time they are written, so that they are the latest
        at their step even when the last run's recount was written after the change was made.
        """
        from mlflow.entities import RunTag

        parent = self.run_id(event.uid)
        with self.sweep_lock(event.uid):
            state = self._sweep_state(parent)
            state.plan = (event.planned, event.budget_j)
            rolled = state.totals(event.planned, event.budget_j)
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

    def end_sweep(self, event: SweepEnd) -> None:
        """This member leaves the sweep; the last member to leave closes the parent.

        Each process that started or joined the sweep is a member (``energy.member.<uid>``,
        RUNNING until it ends: then its status).  The parent is closed when no member is
        RUNNING: FAILED if a member failed, else FINISHED if one finished, else KILLED.  Every
        member writes its own tag before it reads them all, so of two members leaving at once
        the later read sees both and closes the parent (both may: the same status twice).
        A dead session's members are ended by the recovery pass (KILLED), so a sweep never
        stays open because of a kernel that died.  A parent written by an earlier version has
        no member tags: its creator closes it, as then.
        """
        run_id = self.run_id(event.uid)
        self.log_chart(run_id)
        with self._sweep_name_lock(self.client.get_run(run_id).data.tags.get("energy.sweep", "")):
            tags = self.client.get_run(run_id).data.tags
            if not any(k.startswith(MEMBER_TAG) for k in tags):
                if tags.get("energy.uid") == event.uid:
                    self.client.set_terminated(run_id, status=event.status, end_time=event.t_ms)
                return
            self.client.set_tag(run_id, MEMBER_TAG + event.uid, event.status)
            members = {k: v for k, v in self.client.get_run(run_id).data.tags.items() if k.startswith(MEMBER_TAG)}
            members[MEMBER_TAG + event.uid] = event.status
            if "RUNNING" in members.values():
                return
            statuses = set(members.values())
            status = "FAILED" if "FAILED" in statuses else "FINISHED" if "FINISHED" in statuses else "KILLED"
            self.client.set_terminated(run_id, status=status, end_time=event.t_ms)
