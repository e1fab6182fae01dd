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
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

from . import paths

DEFAULT_EXPERIMENT = "ipython-energy"

#: MLflow run status -> the four states the sidebar colours.
STATUS = {
    "RUNNING": "running",
    "SCHEDULED": "running",
    "FINISHED": "finished",
    "FAILED": "failed",
    "KILLED": "killed",
}

#: Run tags shown as provenance on hover (tag -> key in the run row's ``provenance``).
PROVENANCE_TAGS = {
    "energy.methods": "methods",
    "energy.sensors": "sensors",
    "energy.coverage": "coverage",
    "energy.estimated": "estimated",
    "energy.interval_s": "interval_s",
    "energy.gaps": "gaps",
    "energy.short_window": "short_window",
    "energy.idle_source": "idle_source",
    "energy.host": "host",
    "energy.gpu_model": "gpu_model",
    "energy.start_temperature_c": "start_temperature_c",
}

#: What a new user should do when there is nothing to show.
EMPTY_HINT = (
    "No energy measurements found yet. In a notebook run  %load_ext ipython_energy  "
    "then measure a cell with  %%energy --sweep NAME --run NAME  (or %energy sweep NAME "
    "--planned 10). Sweeps and runs appear here as they are logged to MLflow."
)


# ---------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------
def _float(value: Any) -> float | None:
    """A finite float, or None (for missing, unparsable, NaN and infinite values)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _int(value: Any) -> int | None:
    out = _float(value)
    return int(out) if out is not None else None


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def percent_change(new: float, old: float) -> float | None:
    """``new / old - 1`` (0.1 is +10 %), or None when ``old`` is not positive."""
    if old is None or new is None or old <= 0:
        return None
    return new / old - 1.0


def format_percent(change: float) -> str:
    """``-0.58`` -> ``"−58%"`` (with a true minus sign), ``1.1`` -> ``"+110%"``."""
    pct = round(change * 100)
    return f"+{pct}%" if pct >= 0 else f"\u2212{-pct}%"


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
# sweep data: one dict shared by the sidebar, %energy chart and the MLflow artifact
# ---------------------------------------------------------------------------------------
def run_row(run: Any) -> dict[str, Any]:
    """One MLflow child run (an ``mlflow.entities.Run``) as a plain row dict.

    The row is what :func:`build_sweep_data` takes: ``run_id``, ``name``, ``status``
    (running/finished/failed/killed), ``run_index`` (the ``energy.run_index`` tag),
    ``energy_j`` (final), ``live_energy_j`` (latest live value), ``duration_s``,
    ``power_mean_w``, ``start_time_ms``, ``end_time_ms``, ``params``, ``provenance``.
    """
    info, data = run.info, run.data
    metrics, tags = data.metrics, data.tags
    return {
        "run_id": info.run_id,
        "name": info.run_name or tags.get("mlflow.runName") or info.run_id[:8],
        "status": STATUS.get(info.status, info.status.lower()),
        "run_index": _int(tags.get("energy.run_index")),
        "energy_j": _float(metrics.get("energy_j")),
        "live_energy_j": _float(metrics.get("live_energy_j")),
        "live_power_w": _float(metrics.get("live_power_w")),
        "duration_s": _float(metrics.get("duration_s")),
        "power_mean_w": _float(metrics.get("power_mean_w")),
        "start_time_ms": info.start_time,
        "end_time_ms": info.end_time,
        "params": dict(data.params),
        "provenance": {key: tags[tag] for tag, key in PROVENANCE_TAGS.items() if tag in tags},
    }


def sweep_header(run: Any) -> dict[str, Any]:
    """The sweep (MLflow parent run) as a plain dict: name, status, planned, budget, totals."""
    info, data = run.info, run.data
    metrics, tags = data.metrics, data.tags
    return {
        "run_id": info.run_id,
        "experiment_id": info.experiment_id,
        "name": tags.get("energy.sweep") or info.run_name or info.run_id[:8],
        "status": STATUS.get(info.status, info.status.lower()),
        "start_time_ms": info.start_time,
        "end_time_ms": info.end_time,
        "planned": _int(tags.get("energy.planned")),
        "budget_j": _float(tags.get("energy.budget_j", metrics.get("sweep_budget_j"))),
        "budget_state": tags.get("energy.budget_state"),
        # the writer's own roll-up (sum over finished children), for comparison and checks
        "logged_energy_j": _float(metrics.get("sweep_energy_j")),
        "logged_runs": _int(metrics.get("sweep_runs")),
        "logged_mean_energy_per_run_j": _float(metrics.get("sweep_mean_energy_per_run_j")),
        "host": tags.get("energy.host"),
    }


def _run_order(row: Mapping[str, Any]) -> tuple:
    index = row.get("run_index")
    return (index if index is not None else math.inf, row.get("start_time_ms") or 0, row.get("run_id", ""))


def build_sweep_data(sweep: Mapping[str, Any], runs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The sweep as the sidebar and the charts draw it.

    ``sweep`` is a header as :func:`sweep_header` makes it (at least ``name``; ``planned``
    and ``budget_j`` when set); ``runs`` are rows as :func:`run_row` makes them.

    Returns ``{"sweep": header, "runs": [...], "totals": {...}}`` (the runs share their
    ``params`` / ``provenance`` dicts with the input rows: treat them as read-only) where each run gains
    ``index`` (1-based position in run order), ``energy_j`` (the final energy, or the
    latest ``live_energy_j`` while the run is open, with ``live: true``) and
    ``cumulative_j`` (the rising total up to and including this run).  ``totals`` holds
    ``energy_j`` (everything spent so far, live runs included), ``ended_runs`` /
    ``ended_energy_j`` (runs that ended with an energy, any status: the writer's
    ``sweep_runs`` / ``sweep_energy_j``), ``mean_energy_per_run_j`` (ended energy / ended
    runs), ``forecast_energy_j`` (mean x max(planned, ended runs), only with ``planned``),
    ``budget_j``, ``budget_used`` (fraction) and ``over_budget``, ``estimated`` (any run's
    numbers come from a model rather than a sensor).
    """
    ordered = sorted(runs, key=_run_order)
    out_runs: list[dict[str, Any]] = []
    cumulative = 0.0
    ended_n = 0
    ended_j = 0.0
    running_n = 0
    estimated = False
    for position, row in enumerate(ordered, start=1):
        final = _float(row.get("energy_j"))
        live_value = _float(row.get("live_energy_j"))
        status = row.get("status", "finished")
        is_live = final is None and status == "running" and live_value is not None
        energy = final if final is not None else live_value
        if status == "running":
            running_n += 1
        elif final is not None:
            ended_n += 1
            ended_j += final
        if energy is not None:
            cumulative += energy
        prov = row.get("provenance") or {}
        if _truthy(prov.get("estimated", "false")):
            estimated = True
        out_runs.append({
            **row,
            "index": position,
            "energy_j": energy,
            "live": is_live,
            "cumulative_j": cumulative,
        })
    planned = _int(sweep.get("planned"))
    budget = _float(sweep.get("budget_j"))
    mean = ended_j / ended_n if ended_n else None
    forecast = mean * max(planned, ended_n) if (mean is not None and planned) else None
    totals = {
        "runs": len(out_runs),
        "running_runs": running_n,
        "ended_runs": ended_n,
        "ended_energy_j": ended_j,
        "energy_j": cumulative,
        "mean_energy_per_run_j": mean,
        "planned": planned,
        "forecast_energy_j": forecast,
        "budget_j": budget,
        "budget_used": (cumulative / budget) if budget else None,
        "over_budget": bool(budget is not None and cumulative > budget),
        "estimated": estimated,
    }
    return {"sweep": dict(sweep), "runs": out_runs, "totals": totals}


# ---------------------------------------------------------------------------------------
# the experiment: sweeps side by side, and the rebound flag
# ---------------------------------------------------------------------------------------
def sweep_summary(header: Mapping[str, Any], live_energy_j: float = 0.0, running_runs: int = 0) -> dict[str, Any]:
    """One sweep's line in the experiment view, from its header (the writer's roll-up)."""
    runs = header.get("logged_runs") or 0
    total = header.get("logged_energy_j")
    mean = header.get("logged_mean_energy_per_run_j")
    if mean is None and total is not None and runs:
        mean = total / runs
    return {
        "run_id": header["run_id"],
        "name": header["name"],
        "status": header["status"],
        "start_time_ms": header.get("start_time_ms"),
        "runs": runs,
        "planned": header.get("planned"),
        "energy_j": total if total is not None else 0.0,
        "mean_energy_per_run_j": mean,
        "budget_j": header.get("budget_j"),
        "budget_state": header.get("budget_state"),
    }


def find_rebounds(sweeps: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Sweeps whose mean J/run is lower than an earlier sweep's while their total is higher.

    ``sweeps`` need ``run_id``, ``name``, ``start_time_ms``, ``mean_energy_per_run_j`` and
    ``energy_j``; sweeps without a mean (no run ended yet) take no part.  Each rebounding
    sweep is reported once, against the latest earlier sweep it rebounds from, as
    ``{"run_id", "name", "vs_run_id", "vs_name", "mean_energy_per_run_j",
    "vs_mean_energy_per_run_j", "energy_j", "vs_energy_j", "mean_change", "total_change",
    "label"}`` with changes as fractions (-0.58 is 58 % less) and a label such as
    ``"−58% J/run, +110% total"``.
    """
    usable = [s for s in sweeps if _float(s.get("mean_energy_per_run_j")) and _float(s.get("energy_j")) is not None]
    usable.sort(key=lambda s: (s.get("start_time_ms") or 0, s["run_id"]))
    found = []
    for i, later in enumerate(usable):
        for earlier in reversed(usable[:i]):
            mean_change = percent_change(later["mean_energy_per_run_j"], earlier["mean_energy_per_run_j"])
            total_change = percent_change(later["energy_j"], earlier["energy_j"])
            if mean_change is None or total_change is None:
                continue
            if later["mean_energy_per_run_j"] < earlier["mean_energy_per_run_j"] and later["energy_j"] > earlier["energy_j"]:
                found.append({
                    "run_id": later["run_id"], "name": later["name"],
                    "vs_run_id": earlier["run_id"], "vs_name": earlier["name"],
                    "mean_energy_per_run_j": later["mean_energy_per_run_j"],
                    "vs_mean_energy_per_run_j": earlier["mean_energy_per_run_j"],
                    "energy_j": later["energy_j"], "vs_energy_j": earlier["energy_j"],
                    "mean_change": mean_change, "total_change": total_change,
                    "label": f"{format_percent(mean_change)} J/run, {format_percent(total_change)} total",
                })
                break
    return found


def build_experiment_data(experiment: Mapping[str, Any], headers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sweeps side by side (oldest first) with their rebound flags."""
    sweeps = sorted((sweep_summary(h) for h in headers), key=lambda s: (s.get("start_time_ms") or 0, s["run_id"]))
    rebounds = find_rebounds(sweeps)
    by_id = {r["run_id"]: r for r in rebounds}
    for s in sweeps:
        s["rebound"] = by_id.get(s["run_id"])
    return {"experiment": dict(experiment), "sweeps": sweeps, "rebounds": rebounds}


# ---------------------------------------------------------------------------------------
# the session: live/<session>.json
# ---------------------------------------------------------------------------------------
def session_view(home: Path | None = None, now: float | None = None, stale_after_s: float = 10.0) -> dict[str, Any]:
    """This user's live kernels, newest first, from ``live/<session>.json``.

    Each entry: ``session``, ``power_w``, ``total_j`` (the session's energy),
    ``cells_j`` and ``between_cells_j`` (the split into measured cells and idle time between
    cells), ``duration_s``, ``estimated``, ``methods``, ``active_run`` / ``active_sweep``,
    ``updated_at`` and ``age_s``.  Files of dead kernels (pid gone) are left out;
    a live kernel whose file is older than ``stale_after_s`` is marked ``stale``.
    """
    base = (home or paths.home()) / "live"
    now = time.time() if now is None else now
    sessions = []
    try:
        files = sorted(base.glob("*.json"))
    except OSError:
        files = []
    for path in files:
        data = paths.read_json(path)
        if not isinstance(data, dict):
            continue
        pid = _int(data.get("pid"))
        if pid is not None and not paths.pid_alive(pid):
            continue
        updated = _float(data.get("updated_at")) or 0.0
        age = max(0.0, now - updated)
        active_run = data.get("active_run") if isinstance(data.get("active_run"), dict) else None
        active_sweep = data.get("active_sweep") if isinstance(data.get("active_sweep"), dict) else None
        methods = data.get("methods") if isinstance(data.get("methods"), dict) else {}
        sessions.append({
            "session": str(data.get("session") or path.stem),
            "power_w": _float(data.get("power_w")),
            "total_j": _float(data.get("total_j")),
            "cells_j": _float(data.get("cells_j")),
            "between_cells_j": _float(data.get("between_cells_j")),
            "duration_s": _float(data.get("duration_s")),
            "estimated": bool(data.get("estimated")),
            "methods": {str(k): str(v) for k, v in methods.items()},
            "experiment": data.get("experiment"),
            "active_run": None if active_run is None else {
                "name": str(active_run.get("name", "")), "energy_j": _float(active_run.get("energy_j"))},
            "active_sweep": None if active_sweep is None else {
                "name": str(active_sweep.get("name", "")), "total_j": _float(active_sweep.get("total_j")),
                "runs": _int(active_sweep.get("runs"))},
            "updated_at": updated,
            "age_s": age,
            "stale": age > stale_after_s,
        })
    sessions.sort(key=lambda s: -s["updated_at"])
    return {"sessions": sessions}


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

    kernels_dir = (home or paths.home()) / "kernels"
    try:
        registrations = sorted(kernels_dir.glob("*.json"))
    except OSError:
        registrations = []
    for path in registrations:
        reg = paths.read_json(path)
        if not isinstance(reg, dict) or not isinstance(reg.get("tracking_uri"), str):
            continue
        pid = _int(reg.get("pid"))
        alive = pid is not None and paths.pid_alive(pid)
        add(reg["tracking_uri"], str(reg.get("experiment_name") or DEFAULT_EXPERIMENT), "kernel",
            str(reg.get("session") or path.stem), alive, _float(reg.get("started_at")) or 0.0)

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
class NotFound(LookupError):
    """The experiment or sweep is not in this source."""


def _row_key(row: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in row.items()))


def mlflow_client_class():
    """``mlflow.tracking.MlflowClient``, imported from the top of the package.

    Our MLflow imports run on background threads (the writer, the server's pool) while the user
    may be running ``import mlflow`` in a cell.  ``from mlflow.tracking import ...`` first takes
    the import lock of ``mlflow.tracking``, then waits for the package; if the user's thread is
    initializing the package at that moment, it next needs ``mlflow.tracking`` and Python breaks
    the deadlock by handing it a partially initialized module: an ``ImportError`` in the user's
    cell.  ``import mlflow`` first holds no lock while it waits, so the two imports only queue.
    """
    import mlflow  # noqa: F401  (the package first: see above)
    from mlflow.tracking import MlflowClient

    return MlflowClient


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


class SourceReader:
    """Cached MLflow reads for one tracking URI (all experiments in it).

    Thread-safe: the server calls it from an executor.  ``end_margin_ms`` is how far before
    the last refresh a refresh looks for runs that ended (clock skew between writer and
    reader).  Runs that ended longer ago but were never seen running (written late from a
    spool) are caught by comparing with the sweep's own ``sweep_runs`` count.
    """

    def __init__(self, tracking_uri: str, *, end_margin_ms: int = 5_000, page_size: int = 1000):
        self.tracking_uri = tracking_uri
        self.end_margin_ms = end_margin_ms
        self.page_size = page_size
        self._client = None
        self._lock = threading.RLock()
        self._experiment_ids: dict[str, str] = {}
        self._sweep_sets: dict[str, _RunSet] = {}
        self._child_sets: dict[str, _RunSet] = {}
        self._parents: dict[str, dict[str, Any]] = {}
        self._checked_logged_runs: dict[str, int | None] = {}
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

    def _search(self, experiment_id: str, filter_string: str) -> list:
        out, token = [], None
        while True:
            self.stats["searches"] += 1
            page = self.client.search_runs([experiment_id], filter_string=filter_string,
                                           max_results=self.page_size, page_token=token)
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
        """Sweeps of experiment ``name`` side by side, with rebound flags (see build_experiment_data)."""
        with self._lock:
            exp_id = self.experiment_id(name)
            if exp_id is None:
                raise NotFound(f"experiment {name!r} does not exist in this tracking store")
            sweeps = self._sweep_sets.setdefault(exp_id, _RunSet("tags.`energy.kind` = 'sweep'"))
            self._refresh(exp_id, sweeps, sweep_header)
            return build_experiment_data({"id": exp_id, "name": name}, sweeps.rows.values())

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
            children = self._child_sets.setdefault(
                sweep_run_id, _RunSet(f"tags.`mlflow.parentRunId` = '{sweep_run_id}'"))
            parent_changed = self._parents.get(sweep_run_id) != header
            self._parents[sweep_run_id] = header
            if children.loaded and not parent_changed and header["status"] != "running" and not any(
                    row["status"] == "running" for row in children.rows.values()):
                pass  # an ended sweep whose parent did not change: nothing to re-read
            else:
                # Runs that end move the parent's sweep_runs; until it moves, only running
                # runs need reading (plus any we saw running that are no longer).
                self._refresh(exp_id, children, run_row, look_for_ended=parent_changed)
            # The writer's count of finished children says whether we missed any (e.g. runs
            # replayed from the spool long after they ended): then read them all once.
            logged = header.get("logged_runs")
            ended = sum(1 for row in children.rows.values()
                        if row["status"] != "running" and row["energy_j"] is not None)
            if logged is not None and logged > ended and self._checked_logged_runs.get(sweep_run_id) != logged:
                self._checked_logged_runs[sweep_run_id] = logged
                self._refresh(exp_id, children, run_row, full=True)
            return build_sweep_data(header, children.rows.values())
