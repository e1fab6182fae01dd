"""Read side of the MLflow layout (docs/metrics.md): what the sidebar, ``%energy chart``
and the sweep artifact show.

Three layers, each usable on its own:

* pure functions over plain dicts: :func:`build_sweep_data` (a sweep's runs in order,
  the rising total, forecast and budget), :func:`find_rebounds` (sweeps whose J/run fell
  while their total rose), :func:`session_view` (live/<session>.json files);
* :func:`discover_sources`: which (tracking URI, experiment) pairs this Jupyter server
  should show, from server config, the kernels' registrations and the environment;
* :class:`SourceReader`: cached, incremental MLflow reads for one source, so that a
  sidebar polling every 2 s re-reads only runs that are running or just changed.

Nothing here imports mlflow at module level; :class:`SourceReader` imports it on first use.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from . import registry
from .joining import is_run_id
from .layout import run_row, sweep_header
from .ledger import claims_of
from .rebound import Spread, sweep_spread
from .rollup import build_experiment_data, build_sweep_data
from .transport import mlflow_client_class
from .validate import quote

DEFAULT_EXPERIMENT = "ipython-energy"

#: What a new user should do when there is nothing to show.
EMPTY_HINT = (
    "No energy measurements found yet. In a notebook run  %load_ext ipython_energy  "
    "then measure a cell with  %%energy --sweep NAME --run NAME  (or %energy sweep NAME "
    "--planned 10). Sweeps and runs appear here as they are logged to MLflow."
)


# ---------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------
def display_uri(uri: str) -> str:
    """The tracking URI with any ``user:password@`` removed, for showing in the browser."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return uri


# ---------------------------------------------------------------------------------------
# the session: live/<session>.json
# ---------------------------------------------------------------------------------------
def session_view(home: Path | None = None, now: float | None = None, stale_after_s: float = 10.0) -> dict[str, Any]:
    """This user's live kernels, newest first (see :func:`ipython_energy.registry.live_sessions`)."""
    return {"sessions": registry.live_sessions(home, now, stale_after_s)}


# ---------------------------------------------------------------------------------------
# discovery: which (tracking URI, experiment) to show
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One MLflow experiment in one tracking store that the sidebar shows."""

    tracking_uri: str
    experiment_name: str
    origin: str  # "config", "kernel", "environment" or "server-root"
    live_sessions: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """Opaque, stable id used in API routes (routes never carry a URI)."""
        return hashlib.sha1(f"{self.tracking_uri}\n{self.experiment_name}".encode()).hexdigest()[:12]

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tracking_uri": display_uri(self.tracking_uri),
            "experiment": self.experiment_name,
            "origin": self.origin,
            "live_sessions": len(self.live_sessions),
        }


def sqlite_path(uri: str) -> Path | None:
    """The file behind a ``sqlite:///`` tracking URI, or None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def discover_sources(*, tracking_uri: str | None = None, experiment: str | None = None,
                     root_dir: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None,
                     home: Path | None = None) -> list[Source]:
    """The sources this Jupyter server shows, most relevant first.

    * Server config ``tracking_uri`` (``c.EnergySidebar.tracking_uri``) replaces discovery;
      ``experiment`` replaces the experiment name of every source.
    * Otherwise every kernel registration ``kernels/<session>.json`` under
      IPYTHON_ENERGY_HOME (written by ``%load_ext ipython_energy`` with the kernel's
      resolved tracking URI, so a notebook's cwd or MLFLOW_TRACKING_URI need not match
      the server's); kernels still alive come first.
    * Then the server's own ``MLFLOW_TRACKING_URI`` and ``<root_dir>/mlflow.db`` when it exists.
    """
    environ = os.environ if environ is None else environ
    default_exp = experiment or environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    if tracking_uri:
        return [Source(tracking_uri, default_exp, "config")]

    found: dict[tuple[str, str], dict[str, Any]] = {}

    def add(uri: str, exp: str, origin: str, session: str | None = None, alive: bool = False,
            started: float = 0.0) -> None:
        key = (uri, experiment or exp)
        entry = found.setdefault(key, {"origin": origin, "live": [], "started": started, "alive": False})
        if session and alive:
            entry["live"].append(session)
        entry["alive"] = entry["alive"] or alive
        entry["started"] = max(entry["started"], started)

    for reg in registry.kernels(home):
        add(reg.tracking_uri, reg.experiment_name or DEFAULT_EXPERIMENT, "kernel", reg.session, reg.alive,
            reg.started_at)

    env_uri = environ.get("MLFLOW_TRACKING_URI")
    if env_uri:
        add(env_uri, default_exp, "environment")
    if root_dir is not None:
        db = Path(root_dir).resolve() / "mlflow.db"
        if db.is_file():
            add(f"sqlite:///{db}", default_exp, "server-root")

    ordered = sorted(found.items(), key=lambda kv: (not kv[1]["alive"], -kv[1]["started"]))
    return [Source(uri, exp, entry["origin"], tuple(entry["live"])) for (uri, exp), entry in ordered]


# ---------------------------------------------------------------------------------------
# cached, incremental MLflow reads
# ---------------------------------------------------------------------------------------
def _earlier(header: Mapping[str, Any], ended: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The ended runs not read yet, as one figure: the parent's ``sweep_runs`` /
    ``sweep_energy_j`` (the writer's roll-up) less what the runs read so far account for."""
    logged_runs, logged_j = header.get("logged_runs") or 0, header.get("logged_energy_j")
    known_j = sum((row.get("share_j") if row.get("share_j") is not None else row["energy_j"])
                  + (row.get("gap_before_j") or 0.0) for row in ended)
    return {"runs": max(0, logged_runs - len(ended)),
            "energy_j": max(0.0, logged_j - known_j) if logged_j is not None else None}


class NotFound(LookupError):
    """The experiment or sweep is not in this source."""


#: A parent the experiment view read this long ago is as good as one read now (seconds).
_FRESH_S = 2.0
#: A parent with this many params (run-number claims, mostly) is too costly to read on every
#: poll before its own read has been timed: ~0.06 s on sqlite, ``parent_sync_s``.
_COSTLY_PARAMS = 1000
#: An MLflow run id (a claim's value is checked before it goes into a search filter).
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def _is_sweep_of(run: Any, exp_id: str) -> bool:
    """``run`` (or None) is an active sweep parent of experiment ``exp_id``."""
    return (run is not None and run.info.experiment_id == exp_id and run.info.lifecycle_stage == "active"
            and run.data.tags.get("energy.kind") == "sweep")


def _row_key(row: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in row.items()))


@dataclass
class _RunSet:
    """Runs matching one base filter, kept current by incremental searches.

    A refresh re-reads only runs that are RUNNING now, runs that ended since the last
    refresh (with a margin for clock skew between writer and reader), and runs we last saw
    running that neither search returned (deleted, or ended with an old end_time).
    """

    base_filter: str
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded: bool = False
    ended_checked_ms: int = 0  # when runs that ended were last searched for
    #: False while only the newest runs are read and the rest load in the background
    complete: bool = True
    loader: threading.Thread | None = None
    #: a sweep's children: the latest start time among them (new runs are looked for from it)
    newest_start_ms: int = 0
    #: a sweep's children: claimed run ids that MLflow does not return (deleted: superseded runs)
    gone: set[str] = field(default_factory=set)
    #: a sweep's children: the read of the parent whose claims were last looked through, and
    #: the highest run number read or being read (while the older runs load in the background)
    claims_read_at: float | None = None
    claims_upto: int = 0


@dataclass
class _Parent:
    """A sweep's parent run as last read: its header, its run-number claims (``{k: run id}``,
    :func:`ipython_energy.ledger.claims_of`), when it was read and what the read cost.

    A parent holds one param per claimed run, and MLflow reads every param with the run: at
    10,000 runs one ``get_run`` of the parent takes ~0.6 s on sqlite.  So a parent that is
    cheap to read is read on every poll, and one that is not is re-read in the background
    (``refresher``) while polls answer from this copy.
    """

    header: dict[str, Any]
    claims: dict[int, str]
    read_at: float  # time.monotonic()
    #: None: not read on its own yet (it came with the experiment view's search of sweeps)
    cost_s: float | None
    params: int = 0
    #: a child appeared or ended since the read: the parent's totals and claims moved
    moved: bool = False
    refresher: threading.Thread | None = None


class SourceReader:
    """Cached MLflow reads for one tracking URI (all experiments in it).

    Thread-safe: the server calls it from an executor.  ``end_margin_ms`` is how far before
    the last refresh a refresh looks for runs that ended (clock skew between writer and
    reader).  Runs that ended longer ago but were never seen running (written late from a
    spool) are caught by comparing with the sweep's own ``sweep_runs`` count.
    """

    def __init__(self, tracking_uri: str, *, end_margin_ms: int = 5_000, page_size: int = 1000,
                 first_runs: int = 100, parent_sync_s: float = 0.05, parent_every_s: float = 60.0,
                 parent_soon_s: float = 5.0):
        self.tracking_uri = tracking_uri
        self.end_margin_ms = end_margin_ms
        self.page_size = page_size
        self.first_runs = first_runs
        #: a parent whose read took less is read on every poll; one that took more, in the
        #: background (see :meth:`_reread_parent_when_due`)
        self.parent_sync_s = parent_sync_s
        self.parent_every_s = parent_every_s
        self.parent_soon_s = parent_soon_s
        self._client = None
        self._lock = threading.RLock()
        self._experiment_ids: dict[str, str] = {}
        self._sweep_sets: dict[str, _RunSet] = {}
        self._child_sets: dict[str, _RunSet] = {}
        self._parents: dict[str, _Parent] = {}
        self._checked_logged_runs: dict[str, int | None] = {}
        self._build_caches: dict[str, dict] = {}
        self.stats = {"searches": 0, "get_run": 0, "full_loads": 0, "parent_reads": 0}

    # -- plumbing ---------------------------------------------------------------------
    def store_exists(self) -> bool:
        """False for a sqlite file that is not there (reading would create it)."""
        db = sqlite_path(self.tracking_uri)
        return db is None or db.is_file()

    @property
    def client(self):
        if self._client is None:
            self._client = mlflow_client_class()(tracking_uri=self.tracking_uri)
        return self._client

    def _search(self, experiment_id: str, filter_string: str, *, limit: int | None = None,
                newest_first: bool = False) -> list:
        """Every run matching ``filter_string`` (in pages), or the ``limit`` newest/first ones."""
        out, token = [], None
        order = ["attributes.start_time DESC"] if newest_first else None
        while True:
            self.stats["searches"] += 1
            page = self.client.search_runs([experiment_id], filter_string=filter_string,
                                           max_results=min(self.page_size, limit or self.page_size),
                                           page_token=token, order_by=order)
            if limit is not None:
                return list(page)
            out.extend(page)
            token = page.token
            if not token:
                return out

    def _get_run(self, run_id: str):
        """``client.get_run``, or None when the run does not exist."""
        from mlflow.exceptions import MlflowException

        self.stats["get_run"] += 1
        try:
            return self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def experiment_id(self, name: str) -> str | None:
        """The id of experiment ``name``, or None if it does not exist (yet)."""
        with self._lock:
            if name in self._experiment_ids:
                return self._experiment_ids[name]
            if not self.store_exists():
                return None
            exp = self.client.get_experiment_by_name(name)
            if exp is None or exp.lifecycle_stage != "active":
                return None
            self._experiment_ids[name] = exp.experiment_id
            return exp.experiment_id

    def _by_ids(self, experiment_id: str, run_ids: list[str]) -> list:
        """The active runs among ``run_ids``: one search per 100 ids, which MLflow answers from
        the runs table (no scan of the sweep's tags, unlike a search on the parent's id)."""
        out = []
        for i in range(0, len(run_ids), 100):
            ids = ", ".join(f"'{rid}'" for rid in run_ids[i:i + 100])
            self.stats["searches"] += 1
            out += self.client.search_runs([experiment_id], filter_string=f"attributes.run_id IN ({ids})",
                                           max_results=100)
        return out

    def _refresh(self, experiment_id: str, runs: _RunSet, convert, *, full: bool = False,
                 skip: list[str] = ()) -> bool:
        """Bring ``runs`` up to date; True if anything changed.  An incremental refresh leaves
        out the runs ``skip`` (the caller keeps them current)."""
        now_ms = int(time.time() * 1000)
        if full or not runs.loaded:
            runs.ended_checked_ms = now_ms
            self.stats["full_loads"] += 1
            fresh = {r.info.run_id: convert(r) for r in self._search(experiment_id, runs.base_filter)}
            changed = not runs.loaded or {k: _row_key(v) for k, v in fresh.items()} != {
                k: _row_key(v) for k, v in runs.rows.items()}
            runs.rows = fresh
            runs.loaded = True
        else:
            was_running = {rid for rid, row in runs.rows.items() if row["status"] == "running"} - set(skip)
            seen: dict[str, dict[str, Any]] = {}
            base = runs.base_filter + (" and attributes.run_id NOT IN ({})".format(", ".join(f"'{r}'" for r in skip))
                                       if skip else "")
            for r in self._search(experiment_id, f"{base} and attributes.status = 'RUNNING'"):
                seen[r.info.run_id] = convert(r)
            since = runs.ended_checked_ms - self.end_margin_ms
            runs.ended_checked_ms = now_ms
            for r in self._search(experiment_id, f"{base} and attributes.end_time >= {since}"):
                seen[r.info.run_id] = convert(r)
            gone = []
            for rid in was_running - seen.keys():
                r = self._get_run(rid)
                if r is None or r.info.lifecycle_stage != "active":
                    gone.append(rid)
                else:
                    seen[rid] = convert(r)
            changed = bool(gone)
            for rid in gone:
                runs.rows.pop(rid, None)
            for rid, row in seen.items():
                old = runs.rows.get(rid)
                if old is None or _row_key(old) != _row_key(row):
                    runs.rows[rid] = row
                    changed = True
        return changed

    # -- the experiment ---------------------------------------------------------------
    def experiment_data(self, name: str) -> dict[str, Any]:
        """Sweeps of experiment ``name`` side by side, with rebound flags (see build_experiment_data).

        A sweep's runs are read (incrementally, shared with :meth:`sweep_data`) only when the
        rebound rule needs its noise: for sweeps whose J/run fell while their total rose.  A
        sweep whose parent is too costly to read on every poll (thousands of claims) is left
        out of the searches and shown as last read (:meth:`_reread_parent_when_due`).
        """
        with self._lock:
            exp_id = self.experiment_id(name)
            if exp_id is None:
                raise NotFound(f"experiment {name!r} does not exist in this tracking store")
            sweeps = self._sweep_sets.setdefault(exp_id, _RunSet("tags.`energy.kind` = 'sweep'"))
            costly = sorted(rid for rid in sweeps.rows if rid in self._parents and self._costly(self._parents[rid]))
            self._refresh(exp_id, sweeps, lambda run: self._keep_parent(run).header, skip=costly)
            for rid in costly:
                parent = self._parents.get(rid)
                if parent is None:  # the background read found it gone
                    sweeps.rows.pop(rid, None)
                    continue
                sweeps.rows[rid] = parent.header
                self._reread_parent_when_due(exp_id, parent)

            def spread_of(run_id: str) -> Spread | None:
                parent = self._parents.get(run_id)
                return sweep_spread(self._children(exp_id, parent).rows.values()) if parent else None

            return build_experiment_data({"id": exp_id, "name": name}, sweeps.rows.values(), spread_of)

    # -- one sweep ----------------------------------------------------------------------
    def sweep_data(self, experiment_name: str, sweep_run_id: str) -> dict[str, Any]:
        """One sweep (see build_sweep_data), read incrementally.

        Raises :class:`NotFound` if ``sweep_run_id`` is not a sweep of the experiment.
        """
        with self._lock:
            exp_id = self.experiment_id(experiment_name)
            if exp_id is None:
                raise NotFound(f"experiment {experiment_name!r} does not exist in this tracking store")
            parent = self._parent(exp_id, experiment_name, sweep_run_id)
            children = self._children(exp_id, parent)
            header = parent.header
            cache = self._build_caches.setdefault(sweep_run_id, {})
            earlier = None
            if not children.complete:
                ended = [row for row in children.rows.values()
                         if row["status"] != "running" and row["energy_j"] is not None and row.get("kind") != "group"]
                earlier = _earlier(header, ended)
            data = build_sweep_data(header, children.rows.values(), earlier=earlier, cache=cache)
            self._reread_parent_when_due(exp_id, parent)
            return data

    # -- the sweep's parent run ----------------------------------------------------------
    def _parent(self, exp_id: str, experiment_name: str, sweep_run_id: str) -> _Parent:
        """The sweep's parent: read now when it was never read or is cheap to read, else the
        copy (see :class:`_Parent`), or the one the experiment view read less than ``_FRESH_S``
        ago (the two views of one poll read it once).  Raises :class:`NotFound` if it is not a
        sweep of ``exp_id``."""
        parent = self._parents.get(sweep_run_id)
        if parent is not None and (self._costly(parent) or (
                parent.cost_s is None and time.monotonic() - parent.read_at < _FRESH_S)):
            return parent  # costly: re-read in the background; or the experiment view just read it
        started = time.monotonic()
        run = self._get_run(sweep_run_id)
        self.stats["parent_reads"] += 1
        if not _is_sweep_of(run, exp_id):
            raise NotFound(f"no sweep {sweep_run_id} in experiment {experiment_name!r}")
        return self._keep_parent(run, started, time.monotonic() - started)

    def _keep_parent(self, run: Any, started: float | None = None, cost_s: float | None = None) -> _Parent:
        """Keep ``run`` (a sweep's parent, read at ``started``) as the newest copy unless a read
        that started later is kept already.  ``cost_s`` is what reading it took; a parent that
        came with a search (the experiment view) keeps the cost measured last, if any."""
        run_id = run.info.run_id
        old = self._parents.get(run_id)
        started = time.monotonic() if started is None else started
        if old is not None and old.read_at > started:
            return old
        cost = cost_s if cost_s is not None else (old.cost_s if old is not None else None)
        params = run.data.params
        parent = self._parents[run_id] = _Parent(sweep_header(run), claims_of(params), started, cost, len(params))
        return parent

    def _costly(self, parent: _Parent) -> bool:
        """Reading ``parent`` took too long to do it on every poll; one not read on its own yet
        is judged by its params, which make most of the cost (~60 us each on sqlite)."""
        if parent.cost_s is None:
            return parent.params >= _COSTLY_PARAMS
        return parent.cost_s >= self.parent_sync_s

    def _reread_parent_when_due(self, exp_id: str, parent: _Parent) -> None:
        """Re-read a parent too costly to read on every poll in the background, every
        ``parent_every_s`` (6x that once the sweep and its runs have ended), or
        ``parent_soon_s`` after a child appeared or ended while the older runs are still
        loading (their figure comes from the parent's totals).

        Sparingly: the read holds the GIL for most of its ~0.6 s at 10,000 claims, which
        slows the polls it overlaps."""
        if parent.refresher is not None or not self._costly(parent):
            return
        children = self._child_sets.get(parent.header["run_id"])
        open_ = parent.header["status"] == "running" or (
            children is not None and any(row["status"] == "running" for row in children.rows.values()))
        loading = children is not None and not children.complete
        due = self.parent_soon_s if parent.moved and loading else self.parent_every_s * (1 if open_ else 6)
        if time.monotonic() - parent.read_at < due:
            return
        parent.refresher = threading.Thread(target=self._reread_parent, args=(exp_id, parent),
                                            name="ipython-energy-api-parent", daemon=True)
        parent.refresher.start()

    def _reread_parent(self, exp_id: str, parent: _Parent) -> None:
        """Read the parent (outside the lock, so polls go on) and keep it; a parent gone or no
        longer a sweep is dropped, so that the next poll reads it and answers NotFound."""
        run_id, started = parent.header["run_id"], time.monotonic()
        try:
            run = self._get_run(run_id)
        except Exception:  # noqa: BLE001 - a store error: try again when due
            run = parent
        with self._lock:
            self.stats["parent_reads"] += 1
            parent.refresher = None
            if run is parent:
                parent.read_at = started
            elif not _is_sweep_of(run, exp_id):
                self._parents.pop(run_id, None)
            else:
                self._keep_parent(run, started, time.monotonic() - started)

    # -- the sweep's children -------------------------------------------------------------
    def _children(self, exp_id: str, parent: _Parent) -> _RunSet:
        """The sweep's child runs, brought up to date without searching the sweep's children:
        a big sweep's first read takes only its newest runs and reads the rest in the
        background (``complete`` is False until then); later reads go by run id
        (:meth:`_poll_children`)."""
        header = parent.header
        sweep_run_id = header["run_id"]
        children = self._child_sets.setdefault(
            sweep_run_id, _RunSet(f"tags.`mlflow.parentRunId` = '{sweep_run_id}'"))
        if not children.loaded:
            if (header.get("logged_runs") or 0) > 2 * self.first_runs:
                self._load_newest(exp_id, parent, children)
            else:
                self._refresh(exp_id, children, run_row, full=True)
                children.newest_start_ms = max([row["start_time_ms"] or 0 for row in children.rows.values()] + [0])
        elif self._poll_children(exp_id, parent, children):
            parent.moved = True
        if not children.complete:
            if children.loader is None:  # the last background read failed: try again
                self._start_loader(exp_id, children)
            return children
        # Without claims (a sweep written before them), the writer's count of finished children
        # says whether we missed any (e.g. runs replayed from the spool long after they ended):
        # then read them all once.  Counted once per value of that count, not on every poll.
        logged = header.get("logged_runs")
        if parent.claims or logged is None or self._checked_logged_runs.get(sweep_run_id) == logged:
            return children
        self._checked_logged_runs[sweep_run_id] = logged
        ended = sum(1 for row in children.rows.values()
                    if row["status"] != "running" and row["energy_j"] is not None and row.get("kind") != "group")
        if logged > ended:
            self._refresh(exp_id, children, run_row, full=True)
        return children

    def _poll_children(self, exp_id: str, parent: _Parent, children: _RunSet) -> bool:
        """Re-read the children last seen running and read the new ones, by run id; True if a
        child appeared, ended or went (the parent's totals and claims move).

        New children are the parent's claims (``energy.index.<k>``) not read yet.  A sweep
        without claims (written before them), or whose parent is re-read only in the
        background, also looks for children started since the newest it knows (margin
        ``end_margin_ms``): a search on the runs' start time alone, the parent's id checked
        here, again without a scan of the sweep's tags.
        """
        header = parent.header
        sweep_run_id = header["run_id"]
        running = [rid for rid, row in children.rows.items() if row["status"] == "running"]
        # claims not looked through yet; while the older runs load, only numbers above theirs
        upto = 0 if children.complete else children.claims_upto
        new_copy = children.claims_read_at != parent.read_at
        claimed = [rid for k, rid in parent.claims.items() if k > upto and rid not in children.rows
                   and rid not in children.gone and _RUN_ID.fullmatch(rid)] if new_copy else []
        fresh = {}
        look_for_new = (header["status"] == "running" or running) and (not parent.claims or self._costly(parent))
        since = max(children.newest_start_ms, header["start_time_ms"] or 0) - self.end_margin_ms
        if look_for_new:
            for r in self._search(exp_id, f"attributes.start_time >= {since}"):
                if r.data.tags.get("mlflow.parentRunId") == sweep_run_id:
                    fresh[r.info.run_id] = r
        # running runs that search returned are read already
        by_id = [rid for rid in running if rid not in fresh and not (
            look_for_new and (children.rows[rid]["start_time_ms"] or 0) >= since)] + claimed
        fresh.update((r.info.run_id, r) for r in self._by_ids(exp_id, by_id))
        moved = False
        for rid in running:
            if rid not in fresh:  # deleted (a cell's run another run took the place of)
                children.rows.pop(rid, None)
                moved = True
        children.gone.update(rid for rid in claimed if rid not in fresh)
        if new_copy:
            children.claims_read_at = parent.read_at
            children.claims_upto = max([children.claims_upto, *parent.claims])
        for rid, r in fresh.items():
            row = run_row(r)
            old = children.rows.get(rid)
            if old is None or old["status"] != row["status"]:
                moved = True
            if old is None or _row_key(old) != _row_key(row):
                children.rows[rid] = row
            children.newest_start_ms = max(children.newest_start_ms, row["start_time_ms"] or 0)
        return moved

    # -- a big sweep's first view ------------------------------------------------------------
    def _load_newest(self, experiment_id: str, parent: _Parent, children: _RunSet) -> None:
        """Read only the ``first_runs`` newest children now (by the ids of the highest claimed
        run numbers; a sweep without claims: one search) and the rest in the background.

        Until the rest is in, the older runs count as one figure taken from the parent's
        ``sweep_runs`` / ``sweep_energy_j`` (see :func:`_earlier`), and the reply says
        ``loading``.  Runs that end meanwhile are caught by the usual reads by id.
        """
        newest = [rid for _k, rid in sorted(parent.claims.items())[-self.first_runs:] if _RUN_ID.fullmatch(rid)]
        if newest:
            runs = self._by_ids(experiment_id, newest)
        else:
            runs = self._search(experiment_id, children.base_filter, limit=self.first_runs, newest_first=True)
        children.rows = {r.info.run_id: run_row(r) for r in runs}
        children.claims_read_at, children.claims_upto = parent.read_at, max(parent.claims, default=0)
        children.newest_start_ms = max([row["start_time_ms"] or 0 for row in children.rows.values()] + [0])
        children.loaded, children.complete = True, False
        self._start_loader(experiment_id, children)

    def _start_loader(self, experiment_id: str, children: _RunSet) -> None:
        children.loader = threading.Thread(target=self._load_rest, args=(experiment_id, children),
                                           name="ipython-energy-api-loader", daemon=True)
        children.loader.start()

    def _load_rest(self, experiment_id: str, children: _RunSet) -> None:
        """Read every child (outside the lock, so polls go on) and add those not yet known;
        on failure the next poll starts it again."""
        try:
            everything = self._search(experiment_id, children.base_filter)
        except Exception:  # noqa: BLE001 - a store error: the next poll retries
            with self._lock:
                children.loader = None
            return
        with self._lock:
            for r in everything:
                if r.info.run_id not in children.rows:  # known rows are as fresh or fresher
                    children.rows[r.info.run_id] = run_row(r)
            children.complete, children.loader = True, None

    def loading(self, sweep_run_id: str) -> bool:
        """True while a big sweep's older runs are still being read."""
        children = self._child_sets.get(sweep_run_id)
        return children is not None and not children.complete


def whole_sweep(tracking_uri: str, experiment: str, name: str, *, wait_s: float = 120.0) -> dict:
    """The sweep ``name`` (or the sweep whose parent run id ``name`` is) of ``experiment`` as
    MLflow holds it, every member's runs on every host included, in the shape of
    :func:`ipython_energy.rollup.build_sweep_data` (what ``%energy chart --mlflow`` draws).

    Of several parents with the name (left by an earlier version), the one started last is the
    sweep, as for the writers.  A big sweep's older runs are read in the background by the
    reader; this waits up to ``wait_s`` for them.  Raises :class:`NotFound` when there is no such sweep.
    """
    reader = SourceReader(tracking_uri)
    if not reader.store_exists():
        raise NotFound(f"no sweep {quote(name)}: no MLflow store at {tracking_uri} yet")
    exp_id = reader.experiment_id(experiment)
    if exp_id is None:
        raise NotFound(f"no sweep {quote(name)}: experiment {quote(experiment)} does not exist at {tracking_uri}")
    if is_run_id(name):
        run_id = name
    else:
        quoted = name.replace("'", "\\'")
        found = reader.client.search_runs(
            [exp_id], filter_string=f"tags.`energy.kind` = 'sweep' and tags.`energy.sweep` = '{quoted}'",
            max_results=100)
        if not found:
            raise NotFound(f"no sweep named {quote(name)} in experiment {quote(experiment)}")
        run_id = max(found, key=lambda r: (r.info.start_time or 0, r.info.run_id)).info.run_id
    reader.sweep_data(experiment, run_id)  # a big sweep's first read starts reading its older runs
    deadline = time.monotonic() + wait_s
    while reader.loading(run_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    return reader.sweep_data(experiment, run_id)
