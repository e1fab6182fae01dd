"""Authenticated, read-only API for the sidebar, under ``/ipython-energy/api/``.

=========================================  ============================================
``GET poll?source=<source>&sweep=<id>``    what the sidebar polls: all four below in one
``&since=<version>``                       reply, for the selected source and sweep
``GET experiments``                        the sources this server shows (+ empty hint)
``GET experiments/<source>``               sweeps side by side, rebound flags, chart
``GET sweeps/<source>/<sweep run id>``     one sweep: totals, hosts, chart (recent runs one
``?since=<version>``                       by one, older ones binned), or with ``since``
                                           only what changed since that version (feed.py)
``GET session``                            live kernels: power, cells vs idle energy
=========================================  ============================================

``<source>`` is an opaque id from ``GET experiments``; the tracking URI itself comes only
from server config and discovery, never from a request.  MLflow reads run in a thread
pool, off the event loop.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.ioloop import IOLoop
from traitlets import Int, Unicode
from traitlets.config import Configurable

from .. import query
from .feed import SweepFeed

_SOURCE_RE = r"[0-9a-f]{12}"
_RUN_RE = r"[0-9a-fA-F]{32}"
_VERSION_RE = r"[0-9a-f]{8}\.[0-9]{1,12}"
_SOURCE_ID = rf"(?P<source_id>{_SOURCE_RE})"
_RUN_ID = rf"(?P<run_id>{_RUN_RE})"


class EnergySidebar(Configurable):
    """Server-side settings of the ipython-energy sidebar (``c.EnergySidebar.<name>``)."""

    tracking_uri = Unicode(
        None, allow_none=True, config=True,
        help="MLflow tracking URI to show. Unset: the URIs the kernels registered under "
             "IPYTHON_ENERGY_HOME/kernels, then MLFLOW_TRACKING_URI, then <root_dir>/mlflow.db.")
    experiment = Unicode(
        None, allow_none=True, config=True,
        help="MLflow experiment to show. Unset: each kernel's own (MLFLOW_EXPERIMENT_NAME or ipython-energy).")
    max_workers = Int(2, config=True, help="Threads that read MLflow for the sidebar.")


class SidebarState:
    """What the handlers share: config, discovered sources, one cached reader per URI."""

    def __init__(self, settings: EnergySidebar, root_dir: str | None):
        self.settings = settings
        self.root_dir = root_dir
        self.executor = ThreadPoolExecutor(max_workers=settings.max_workers,
                                           thread_name_prefix="ipython-energy-api")
        self._known: dict[str, query.Source] = {}
        self._readers: dict[str, query.SourceReader] = {}
        self._chart_memos: dict[tuple[str, str], dict] = {}
        self._feeds: dict[tuple[str, str], SweepFeed] = {}
        self._experiment_charts: dict[str, tuple[str, dict]] = {}

    def sources(self) -> list[query.Source]:
        """Sources discovered now, then those seen earlier in this server's life (their kernels ended)."""
        now = query.discover_sources(tracking_uri=self.settings.tracking_uri,
                                     experiment=self.settings.experiment, root_dir=self.root_dir)
        current = {s.id: s for s in now}
        for sid, src in list(self._known.items()):
            if sid not in current:
                current[sid] = query.Source(src.tracking_uri, src.experiment_name, src.origin, ())
        self._known = current
        return list(current.values())

    def source(self, source_id: str) -> query.Source:
        src = self._known.get(source_id) or {s.id: s for s in self.sources()}.get(source_id)
        if src is None:
            raise tornado.web.HTTPError(404, "unknown source")
        return src

    def reader(self, src: query.Source) -> query.SourceReader:
        reader = self._readers.get(src.tracking_uri)
        if reader is None:
            reader = self._readers[src.tracking_uri] = query.SourceReader(src.tracking_uri)
        return reader

    # -- what the routes return (called in the executor) -----------------------------------
    def list_experiments(self) -> dict[str, Any]:
        """Every source, with ``exists`` (store and experiment are there) and, for a store
        that cannot be read right now, ``error`` (the others are still listed)."""
        listed = []
        for src in self.sources():
            entry = src.public()
            try:
                entry["exists"] = self.reader(src).experiment_id(src.experiment_name) is not None
            except _store_errors() as exc:
                entry["exists"], entry["error"] = False, str(exc)
            listed.append(entry)
        return {"sources": listed, "hint": query.EMPTY_HINT}

    def experiment(self, source_id: str) -> dict[str, Any]:
        src = self.source(source_id)
        data = self.reader(src).experiment_data(src.experiment_name)
        data["source"] = src.public()
        data["chart"] = self._experiment_chart(source_id, data) if data["sweeps"] else None
        return data

    def _experiment_chart(self, source_id: str, data: dict[str, Any]) -> dict:
        """``charts.experiment_spec``, rebuilt (altair, tens of ms) only when the sweeps changed."""
        from .. import charts

        key = json.dumps(data["sweeps"], sort_keys=True, default=str)
        cached = self._experiment_charts.get(source_id)
        if cached is None or cached[0] != key:
            cached = self._experiment_charts[source_id] = (key, charts.experiment_spec(data))
        return cached[1]

    def sweep(self, source_id: str, run_id: str, since: str | None = None) -> dict[str, Any]:
        """One sweep: header, totals, energy per host, the latest run and its chart.

        The chart shows the recent runs one by one and older ones binned (sweep_window.py).
        Every reply carries a ``version``; given a recent one as ``since``, the reply carries
        ``delta`` (what changed since, see feed.py) and ``chart`` is None.  ``loading`` is
        true while a big sweep's older runs are still being read (their bin then comes from
        the sweep's logged totals).
        """
        from .. import charts

        src = self.source(source_id)
        reader = self.reader(src)
        data = reader.sweep_data(src.experiment_name, run_id)
        key = (source_id, run_id)
        datasets = charts.chart_rows(data, memo=self._chart_memos.setdefault(key, {}))
        version, delta = self._feeds.setdefault(key, SweepFeed()).publish(datasets, since)
        reply = {
            "source": src.public(),
            "sweep": data["sweep"],
            "totals": data["totals"],
            "hosts": data["hosts"],
            "loading": reader.loading(run_id),
            # the runs themselves travel as the chart's data (names, params, provenance)
            "latest_run": ({k: data["runs"][-1].get(k) for k in ("index", "run_id", "name", "status", "energy_j",
                                                                  "live", "energy_low_util_j",
                                                                  "low_util_threshold")} if data["runs"] else None),
            "version": version,
            "chart": None if delta is not None else {**charts.skeleton_dict(), "datasets": datasets},
        }
        if delta is not None:
            reply["delta"] = delta
        return reply

    def session(self) -> dict[str, Any]:
        return query.session_view()

    def poll(self, source_id: str | None, sweep_id: str | None, since: str | None = None) -> dict[str, Any]:
        """One sidebar poll: :meth:`list_experiments`, :meth:`session`, and for the selected
        source :meth:`experiment` and :meth:`sweep`, each reply unchanged, in one document.

        ``source_id`` and ``sweep_id`` are what the user picked, or None.  The source falls back
        to the first that exists; the sweep to the newest running one, else the newest (a pick
        that is gone is dropped).  ``selected`` names what the reply shows.  ``since`` is the
        version of the sweep the browser has (see :meth:`sweep`); it only ever matches the
        sweep it came from.

        When the selected store cannot be read, the reply still carries the listing and the
        session, with ``unavailable`` saying why (the sidebar keeps showing its last sweeps).
        """
        reply = self.list_experiments()
        reply["session"] = self.session()
        reply["selected"] = {"source": None, "sweep": None}
        reply["experiment"] = reply["sweep"] = None
        usable = [s["id"] for s in reply["sources"] if s["exists"]]
        source = source_id if source_id in usable else (usable[0] if usable else None)
        if source is None:
            return reply
        reply["selected"] = {"source": source, "sweep": None}
        try:
            reply["experiment"] = self.experiment(source)
            sweep = _pick_sweep(reply["experiment"]["sweeps"], sweep_id)
            reply["selected"]["sweep"] = sweep
            if sweep is not None:
                reply["sweep"] = self.sweep(source, sweep, since)
        except _store_errors() as exc:
            reply["experiment"] = reply["sweep"] = None
            reply["unavailable"] = f"MLflow is not answering: {exc}"
        return reply

    def warm_up(self) -> None:
        """Import mlflow and altair and build the sweep chart's skeleton (altair: seconds on a
        busy machine) in the pool, so the first sidebar request is not slow."""
        from .. import charts

        charts.skeleton_dict()
        query.mlflow_client_class()


def _pick_sweep(sweeps: list[dict[str, Any]], wanted: str | None) -> str | None:
    """The sweep the user picked if it is listed; otherwise follow the newest running one,
    else the newest (``sweeps`` come oldest first)."""
    if wanted is not None and any(s["run_id"] == wanted for s in sweeps):
        return wanted
    pool = [s for s in sweeps if s["status"] == "running"] or sweeps
    return pool[-1]["run_id"] if pool else None


class EnergyHandler(APIHandler):
    """Base: JSON out, work in the executor, MLflow failures as 503 with a message."""

    @property
    def state(self) -> SidebarState:
        return self.settings["ipython_energy"]

    async def answer(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            data = await IOLoop.current().run_in_executor(self.state.executor, _call, fn, args)
        except query.NotFound as exc:
            raise tornado.web.HTTPError(404, str(exc)) from exc
        except _Unavailable as exc:
            self.log.warning("ipython-energy: MLflow read failed: %s", exc)
            raise tornado.web.HTTPError(503, f"MLflow is not answering: {exc}") from exc
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, separators=(",", ":")))


class _Unavailable(RuntimeError):
    """The tracking store could not be read."""


def _call(fn: Callable[..., Any], args: tuple) -> Any:
    """Run ``fn`` in the executor; MLflow and I/O failures become :class:`_Unavailable`.

    mlflow is imported here, in the pool, never on the event loop.
    """
    try:
        return fn(*args)
    except _store_errors() as exc:
        raise _Unavailable(str(exc)) from exc


def _store_errors() -> tuple[type[BaseException], ...]:
    """What reading a tracking store raises when the store is unreachable or unreadable:
    MlflowException (REST and most store errors), OSError (network, files) and SQLAlchemy's
    errors, which MLflow's sqlite store lets through (e.g. a file that is not a database)."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return (MlflowException, OSError, SQLAlchemyError)


class ExperimentsHandler(EnergyHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(self.state.list_experiments)


class ExperimentHandler(EnergyHandler):
    @tornado.web.authenticated
    async def get(self, source_id: str) -> None:
        await self.answer(self.state.experiment, source_id)


class SweepHandler(EnergyHandler):
    @tornado.web.authenticated
    async def get(self, source_id: str, run_id: str) -> None:
        await self.answer(self.state.sweep, source_id, run_id, _query_id(self, "since", _VERSION_RE))


class SessionHandler(EnergyHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(self.state.session)


class PollHandler(EnergyHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(self.state.poll, _query_id(self, "source", _SOURCE_RE), _query_id(self, "sweep", _RUN_RE),
                          _query_id(self, "since", _VERSION_RE))


def _query_id(handler: APIHandler, name: str, pattern: str) -> str | None:
    """An opaque id from the query string (absent or empty: None); anything else is a 400."""
    value = handler.get_query_argument(name, "")
    if value and not re.fullmatch(pattern, value):
        raise tornado.web.HTTPError(400, f"{name} is not an id")
    return value or None


def setup_handlers(serverapp) -> SidebarState:
    web_app = serverapp.web_app
    settings = EnergySidebar(config=serverapp.config, parent=serverapp)
    state = SidebarState(settings, getattr(serverapp, "root_dir", None) or os.getcwd())
    web_app.settings["ipython_energy"] = state
    base = url_path_join(web_app.settings["base_url"], "ipython-energy", "api")
    web_app.add_handlers(".*$", [
        (url_path_join(base, "experiments") + "/?", ExperimentsHandler),
        (url_path_join(base, "experiments", _SOURCE_ID) + "/?", ExperimentHandler),
        (url_path_join(base, "sweeps", _SOURCE_ID, _RUN_ID) + "/?", SweepHandler),
        (url_path_join(base, "session") + "/?", SessionHandler),
        (url_path_join(base, "poll") + "/?", PollHandler),
    ])
    state.executor.submit(state.warm_up)
    return state
