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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from . import registry
from .joining import is_run_id
from .layout import run_row, sweep_header
from .rebound import Spread, sweep_spread
from .rollup import build_experiment_data, build_sweep_data
from .transport import mlflow_client_class

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


class SourceReader:
    """Cached MLflow reads for one tracking URI (all experiments in it).

    Thread-safe: the server calls it from an executor.  ``end_margin_ms`` is how far before
    the last refresh a refresh looks for runs that ended (clock skew between writer and
    reader).  Runs that ended longer ago but were never seen running (written late from a
    spool) are caught by comparing with the sweep's own ``sweep_runs`` count.
    """

    def __init__(self, tracking_uri: str, *, end_margin_ms: int = 5_000, page_size: int = 1000,
                 first_runs: int = 250):
        self.tracking_uri = tracking_uri
        self.end_margin_ms = end_margin_ms
        self.page_size = page_size
        self.first_runs = first_runs
        self._client = None
        self._lock = threading.RLock()
        self._experiment_ids: dict[str, str] = {}
        self._sweep_sets: dict[str, _RunSet] = {}
        self._child_sets: dict[str, _RunSet] = {}
        self._parents: dict[str, dict[str, Any]] = {}
        self._checked_logged_runs: dict[str, int | None] = {}
        self._build_caches: dict[str, dict] = {}
        self.stats = {"searches": 0, "get_run": 0, "full_loads": 0}

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

    def _refresh(self, experiment_id: str, runs: _RunSet, convert, *, full: bool = False,
                 look_for_ended: bool = True) -> bool:
        """Bring ``runs`` up to date; True if anything changed.

        ``look_for_ended=False`` skips the search for runs that ended since the last such
        search (the caller knows none did: a sweep whose finished count did not move); runs
        last seen running are still re-read.
        """
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
            was_running = {rid for rid, row in runs.rows.items() if row["status"] == "running"}
            seen: dict[str, dict[str, Any]] = {}
            for r in self._search(experiment_id, f"{runs.base_filter} and attributes.status = 'RUNNING'"):
                seen[r.info.run_id] = convert(r)
            if look_for_ended:
                since = runs.ended_checked_ms - self.end_margin_ms
                runs.ended_checked_ms = now_ms
                for r in self._search(experiment_id, f"{runs.base_filter} and attributes.end_time >= {since}"):
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
        rebound rule needs its noise: for sweeps whose J/run fell while their total rose.
        """
        with self._lock:
            exp_id = self.experiment_id(name)
            if exp_id is None:
                raise NotFound(f"experiment {name!r} does not exist in this tracking store")
            sweeps = self._sweep_sets.setdefault(exp_id, _RunSet("tags.`energy.kind` = 'sweep'"))
            self._refresh(exp_id, sweeps, sweep_header)

            def spread_of(run_id: str) -> Spread | None:
                header = sweeps.rows.get(run_id)
                return sweep_spread(self._children(exp_id, header).rows.values()) if header else None

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
            parent_run = self._get_run(sweep_run_id)
            if (parent_run is None or parent_run.info.experiment_id != exp_id or parent_run.info.lifecycle_stage != "active"
                    or parent_run.data.tags.get("energy.kind") != "sweep"):
                raise NotFound(f"no sweep {sweep_run_id} in experiment {experiment_name!r}")
            header = sweep_header(parent_run)
            children = self._children(exp_id, header)
            cache = self._build_caches.setdefault(sweep_run_id, {})
            if not children.complete:
                ended = [row for row in children.rows.values()
                         if row["status"] != "running" and row["energy_j"] is not None and row.get("kind") != "group"]
                return build_sweep_data(header, children.rows.values(), earlier=_earlier(header, ended), cache=cache)
            return build_sweep_data(header, children.rows.values(), cache=cache)

    def _children(self, exp_id: str, header: dict[str, Any]) -> _RunSet:
        """The sweep's child runs (``header`` is its :func:`sweep_header`), brought up to date with
        as few searches as the parent's state allows; a big sweep's first read takes only its
        newest runs and reads the rest in the background (``complete`` is False until then)."""
        sweep_run_id = header["run_id"]
        children = self._child_sets.setdefault(
            sweep_run_id, _RunSet(f"tags.`mlflow.parentRunId` = '{sweep_run_id}'"))
        parent_changed = self._parents.get(sweep_run_id) != header
        self._parents[sweep_run_id] = header
        if not children.loaded and (header.get("logged_runs") or 0) > 2 * self.first_runs:
            self._load_newest(exp_id, sweep_run_id, children)
        elif children.loaded and not parent_changed and header["status"] != "running" and not any(
                row["status"] == "running" for row in children.rows.values()):
            pass  # an ended sweep whose parent did not change: nothing to re-read
        else:
            # Runs that end move the parent's sweep_runs; until it moves, only running
            # runs need reading (plus any we saw running that are no longer).
            self._refresh(exp_id, children, run_row, look_for_ended=parent_changed)
        if not children.complete:
            if children.loader is None:  # the last background read failed: try again
                self._start_loader(exp_id, children)
            return children
        # The writer's count of finished children says whether we missed any (e.g. runs
        # replayed from the spool long after they ended): then read them all once.
        logged = header.get("logged_runs")
        ended = sum(1 for row in children.rows.values()
                    if row["status"] != "running" and row["energy_j"] is not None and row.get("kind") != "group")
        if logged is not None and logged > ended and self._checked_logged_runs.get(sweep_run_id) != logged:
            self._checked_logged_runs[sweep_run_id] = logged
            self._refresh(exp_id, children, run_row, full=True)
        return children

    # -- a big sweep's first view ------------------------------------------------------------
    def _load_newest(self, experiment_id: str, sweep_run_id: str, children: _RunSet) -> None:
        """Read only the ``first_runs`` newest children now (one search, well under a second
        where reading 10,000 runs takes ~10 s) and the rest in the background.

        Until the rest is in, the older runs count as one figure taken from the parent's
        ``sweep_runs`` / ``sweep_energy_j`` (see :func:`_earlier`), and the reply says
        ``loading``.  Runs that end meanwhile are caught by the usual incremental refresh.
        """
        children.ended_checked_ms = int(time.time() * 1000)
        newest = self._search(experiment_id, children.base_filter, limit=self.first_runs, newest_first=True)
        children.rows = {r.info.run_id: run_row(r) for r in newest}
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
        raise NotFound(f"no sweep {name!r}: no MLflow store at {tracking_uri} yet")
    exp_id = reader.experiment_id(experiment)
    if exp_id is None:
        raise NotFound(f"no sweep {name!r}: experiment {experiment!r} does not exist at {tracking_uri}")
    if is_run_id(name):
        run_id = name
    else:
        quoted = name.replace("'", "\\'")
        found = reader.client.search_runs(
            [exp_id], filter_string=f"tags.`energy.kind` = 'sweep' and tags.`energy.sweep` = '{quoted}'",
            max_results=100)
        if not found:
            raise NotFound(f"no sweep named {name!r} in experiment {experiment!r}")
        run_id = max(found, key=lambda r: (r.info.start_time or 0, r.info.run_id)).info.run_id
    reader.sweep_data(experiment, run_id)  # a big sweep's first read starts reading its older runs
    deadline = time.monotonic() + wait_s
    while reader.loading(run_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    return reader.sweep_data(experiment, run_id)
