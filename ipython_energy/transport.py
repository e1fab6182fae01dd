"""The writer's own MLflow client and how it tells slow from down.

:func:`writer_client` is an ``MlflowClient`` for the background writer alone: a request that
creates something is sent once (a creation whose answer was lost is looked up by its
``energy.uid`` before it is sent again, by :mod:`ipython_energy.store`), safe requests are resent a
few times, each waits as long as :class:`Pace` says (it grows while the server is slow), and MLflow's
``View run`` lines are never printed.  Nothing here changes the client the user's own code uses,
nor any environment variable.  Also: which failures are a refusal (:func:`is_rejection`), one line
for the user per failure (:func:`describe_error`), and the muting of MLflow's log records on the
writer's threads.
"""

from __future__ import annotations

import functools
import json
import logging
import statistics
import time
from collections import deque
from typing import Any, Callable

#: The writer's two threads; MLflow's and its libraries' log records made on them are muted.
THREAD_NAME = "ipython-energy-writer"
JOURNAL_THREAD_NAME = "ipython-energy-journal"


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


class Pace:
    """How quickly the writer's tracking server answers: each request's timeout, and whether it is slow.

    One per writer, shared by its stores.  A request's timeout starts at ten times the server's
    recent answer time (the median of the last five answers, at least :attr:`FIRST_TIMEOUT_S`)
    and doubles after each request that got no answer in time, up to ``timeout_s``: a server
    that answers in 2 s is waited for, and a request that timed out is tried again with a
    longer wait before the server counts as not answering (:meth:`gave_up`).
    """

    FIRST_TIMEOUT_S = 2.0
    HEADROOM = 10.0

    def __init__(self, timeout_s: float = 120.0, slow_s: float = 1.0):
        self.max_timeout_s = float(timeout_s)
        self.slow_s = float(slow_s)
        self._recent: deque[float] = deque(maxlen=5)
        self.timeouts = 0  # requests in a row that got no answer in time
        self.expired_s: float | None = None  # the wait the last request ran out of; None: it had an answer or failed
        self.requests = 0
        self.last_good = float("-inf")  # monotonic time of the last answer that was not a 5xx/429

    def latency_s(self) -> float | None:
        """The median time of the last five answers (None before the first)."""
        return statistics.median(self._recent) if self._recent else None

    def timeout_s(self) -> float:
        latency = self.latency_s()
        base = self.FIRST_TIMEOUT_S if latency is None else max(self.FIRST_TIMEOUT_S, self.HEADROOM * latency)
        return min(self.max_timeout_s, base * 2 ** min(self.timeouts, 20))

    def gave_up(self) -> bool:
        """The last request got no answer within the longest wait: the server is not answering."""
        return self.expired_s is not None and self.expired_s >= self.max_timeout_s

    def slow(self) -> bool:
        latency = self.latency_s()
        return (latency is not None and latency > self.slow_s) or self.timeouts > 0

    def send(self, call: Callable[[float], Any], tries: int = 1):
        """``call(timeout_s)`` up to ``tries`` times while it fails or answers 5xx/429; its last answer.

        ``tries`` > 1 only for requests that change nothing when repeated (reads, tags, params,
        status): a request that creates something is sent once, and the writer, which knows what
        it sent, looks for it before sending it again (the event is then in doubt).
        """
        for attempt in range(tries):
            timeout = self.timeout_s()
            start = time.monotonic()
            self.requests += 1
            try:
                answer = call(timeout)
            except Exception as exc:  # noqa: BLE001 - classified, then raised on the last try
                if is_timeout(exc):
                    self.timeouts += 1
                    self.expired_s = timeout
                else:
                    self.expired_s = None
                if attempt + 1 >= tries:
                    raise
            else:
                self._recent.append(time.monotonic() - start)
                self.timeouts = 0
                self.expired_s = None
                status = getattr(answer, "status_code", 200)
                if not (status >= 500 or status == 429):
                    self.last_good = time.monotonic()
                if attempt + 1 >= tries or not (status >= 500 or status == 429):
                    return answer
            time.sleep(0.1 * 2 ** attempt)
        raise AssertionError("unreachable")


def is_timeout(exc: BaseException) -> bool:
    """No answer in time (as opposed to a refused or dropped connection), anywhere in ``exc``'s causes."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


#: Requests sent once only: repeating one after a lost answer would create a second run,
#: experiment or metric point.  (A log_batch without metrics only sets params and tags: the same
#: values again change nothing.)
_CREATING = frozenset({"CreateRun", "CreateExperiment", "LogMetric", "LogModel", "LogInputs", "LogOutputs"})
_RETRIES = 4


def _sent_once(api, body) -> bool:
    name = getattr(api, "__name__", "")
    if name == "LogBatch":
        return bool((body or {}).get("metrics"))
    return name in _CREATING


@functools.lru_cache(maxsize=None)
def _writer_classes():
    """The writer's own REST store and tracking client classes (made once, MLflow imported lazily).

    ``WriterRestStore`` sends each request once, through ``http_request(max_retries=0)`` with the
    :class:`Pace`'s timeout, where MLflow's ``call_endpoint`` would let urllib3 resend a POST
    up to seven times after the server had committed it (a second run with the same uid).
    ``QuietTrackingClient`` uses that store and never prints ``View run``/``View experiment``
    (``TrackingServiceClient._log_url``, which also costs a get_run per ended run).  Both are
    attached to one client object; MLflow's registry, its cached stores and every other client
    in the process are left as they are.
    """
    mlflow_client_class()  # the package first (see there)
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.tracking._tracking_service.client import TrackingServiceClient
    from mlflow.utils.proto_json_utils import parse_dict
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    class WriterRestStore(RestStore):
        def __init__(self, get_host_creds, pace: Pace):
            super().__init__(get_host_creds)
            self.pace = pace

        def _call_endpoint(self, api, json_body=None, endpoint=None, retry_timeout_seconds=None,
                           response_proto=None):
            # As RestStore._call_endpoint and rest_utils.call_endpoint, with our retries and timeout.
            method_to_info = self._V3_METHOD_TO_INFO if api in self._V3_APIS else self._METHOD_TO_INFO
            check = getattr(self, "_validate_workspace_support_if_specified", None)
            if check is not None:
                check()
            if endpoint:
                _, method = method_to_info[api]
            else:
                endpoint, method = method_to_info[api]
            body = json.loads(json_body) if json_body is not None else None
            kwargs = {"params": body} if method == "GET" else {"json": body}
            host_creds = self.get_host_creds()
            response = self.pace.send(
                lambda timeout: http_request(host_creds, endpoint, method, max_retries=0, retry_codes=(),
                                             timeout=timeout, **kwargs),
                tries=1 if _sent_once(api, body) else _RETRIES)
            response = verify_rest_response(response, endpoint)
            response_proto = response_proto or api.Response()
            if response.status_code == 204:
                return response_proto
            parse_dict(js_dict=json.loads(response.text), message=response_proto)
            return response_proto

    class QuietTrackingClient(TrackingServiceClient):
        def __init__(self, tracking_uri, store=None):
            self._own_store = store
            super().__init__(tracking_uri)

        @property
        def store(self):
            return self._own_store if self._own_store is not None else TrackingServiceClient.store.fget(self)

        def _log_url(self, run_id):
            return None

    return WriterRestStore, QuietTrackingClient


def writer_client(tracking_uri: str, pace: Pace | None = None):
    """An ``MlflowClient`` for the writer's thread: no retries of its own, timeouts from ``pace``, no prints.

    The user's ``mlflow.*`` calls and ``MlflowClient`` objects (other stores, other threads)
    keep MLflow's behaviour: only this object's tracking client is replaced.
    """
    from mlflow.tracking._tracking_service.utils import get_default_host_creds

    rest_store, tracking_client = _writer_classes()
    client = mlflow_client_class()(tracking_uri=tracking_uri)
    store = None
    if is_http(tracking_uri):
        store = rest_store(functools.partial(get_default_host_creds, tracking_uri), pace or Pace())
    client._tracking_client = tracking_client(client.tracking_uri, store)
    return client


REJECTION_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                    "BAD_REQUEST", "INVALID_STATE"}


def is_rejection(exc: Exception) -> bool:
    """The backend answered and said no (as opposed to not answering)."""
    if isinstance(exc, LookupError):  # our own: the run this event belongs to was never created
        return True
    code = getattr(exc, "error_code", None)
    return isinstance(code, str) and code in REJECTION_CODES


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


def mute_library_logs_on_writer_thread() -> None:
    """Attach :data:`_MUTE` to the handlers MLflow installs and to urllib3's retry logger (idempotent)."""
    for name in ("mlflow", "sqlalchemy.engine", "alembic"):
        for handler in logging.getLogger(name).handlers:
            if _MUTE not in handler.filters:
                handler.addFilter(_MUTE)
    pool = logging.getLogger("urllib3.connectionpool")
    if _MUTE not in pool.filters:
        pool.addFilter(_MUTE)
