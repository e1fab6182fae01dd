"""Shared fixtures.  Everything above the hardware seam is real: MLflow's sqlite store or a real
``mlflow server`` process, a real IPython shell, real threads.  Hardware is replaced only by the
replay sensor (a synthetic power trace played against the monotonic clock) or by fakes at the
sensor seam, and each test that does so says it."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.kernel import Kernel, energy_env
from tests.helpers.mlflow_readback import create_store
from tests.helpers.net import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _short_gc_pauses():
    """After each test, collect its garbage and freeze what survives (``gc.freeze``), so that later
    collections scan only what the next test allocates.

    Why: MLflow keeps the stores of its last 100 tracking URIs, and nearly every test here has a
    sqlite store of its own; ~30,000 objects each.  Past a hundred tests the process held ~4 million
    objects, and each full collection stopped every thread for 0.2-2.4 s on this machine, inside
    whichever test happened to allocate then (a cell of 1.0 s of sleeps measured as 1.59 s in CI,
    its sensor unread meanwhile).  A user's kernel has one store, and a stable object count over
    10,000 cells (tests/faults/test_fault_soak.py).
    """
    yield
    gc.collect()
    gc.freeze()


@pytest.fixture
def energy_home(tmp_path, monkeypatch):
    """A private IPYTHON_ENERGY_HOME for the test; no settings leak in from the environment."""
    home = tmp_path / "energy-home"
    monkeypatch.setenv("IPYTHON_ENERGY_HOME", str(home))
    for key in list(os.environ):
        if key.startswith("IPYTHON_ENERGY_") and key != "IPYTHON_ENERGY_HOME":
            monkeypatch.delenv(key)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return home


def write_trace(path: Path, watts: dict[str, float], seconds: float = 3600.0) -> Path:
    """A flat synthetic power trace (replay sensor input): one column per domain, in watts."""
    cols = list(watts)
    lines = ["t_s," + ",".join(f"{c}_w" for c in cols)]
    for t in (0.0, seconds):
        lines.append(f"{t}," + ",".join(str(watts[c]) for c in cols))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def flat_trace(tmp_path) -> Path:
    """Replay sensor input: gpu0 at a steady 100 W and cpu at 20 W (no hardware here)."""
    return write_trace(tmp_path / "flat.csv", {"gpu0": 100.0, "cpu": 20.0})


@pytest.fixture(scope="session")
def empty_store_template(tmp_path_factory) -> Path:
    """An MLflow sqlite store with MLflow's tables made and nothing logged, made once per session by
    the MLflow client in a process of its own (so that this one does not import mlflow for it)."""
    folder = tmp_path_factory.mktemp("empty-store")
    db = folder / "mlflow.db"
    subprocess.run([sys.executable, "-c", "import sys\nfrom mlflow.tracking import MlflowClient\n"
                    "MlflowClient(sys.argv[1]).search_experiments(max_results=1)", f"sqlite:///{db}"],
                   cwd=folder, check=True, capture_output=True, timeout=300)
    return db


@pytest.fixture
def sqlite_uri(tmp_path, empty_store_template) -> str:
    """The test's own MLflow sqlite store: empty, its tables already made.

    A copy of one store made at the start of the session: making MLflow's tables (its schema
    migrations) costs about 2 s of CPU per store on this machine, and nearly every test has a
    store.  A test of what happens where no store exists yet makes a path of its own.
    """
    db = tmp_path / "mlflow.db"
    shutil.copyfile(empty_store_template, db)
    return f"sqlite:///{db}"


@pytest.fixture
def ip(energy_home, flat_trace, sqlite_uri, monkeypatch, tmp_path, capsys):
    """A real IPython shell with ``ipython_energy`` loaded, measuring with the replay sensor on
    ``flat_trace`` (the hardware seam) and logging to ``sqlite_uri``; its load line is in ``capsys``."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.testing.globalipapp import start_ipython

    import ipython_energy

    monkeypatch.setenv("IPYTHON_ENERGY_SENSORS", f"replay:{flat_trace}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    monkeypatch.chdir(tmp_path)
    start_ipython()
    shell = InteractiveShell.instance()
    ipython_energy.load_ipython_extension(shell)
    yield shell
    ipython_energy.unload_ipython_extension(shell)


@pytest.fixture
def start_kernel(tmp_path, energy_home):
    """``start_kernel(trace, uri, extra_arguments=(), **env) -> Kernel``: a real Jupyter kernel in
    ``tmp_path`` that measures with the replay sensor on ``trace`` and logs to ``uri`` (its store
    created first), with the test's IPYTHON_ENERGY_HOME and the variables in ``env``.  Every kernel
    started is shut down at teardown."""
    started: list[Kernel] = []

    def start(trace: Path, uri: str, extra_arguments=(), **env: str) -> Kernel:
        create_store(uri)
        kernel = Kernel(tmp_path, energy_env(energy_home, trace, uri, **env), extra_arguments)
        started.append(kernel)
        return kernel

    yield start
    for kernel in started:
        kernel.shutdown()


class MlflowServer:
    """A real ``mlflow server`` process on 127.0.0.1 that a test can kill and restart."""

    def __init__(self, workdir: Path, backend_store_uri: str | None = None):
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.backend_store_uri = backend_store_uri or f"sqlite:///{workdir / 'server.db'}"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90.0) -> None:
        log = open(self.workdir / "mlflow-server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", self.backend_store_uri,
             "--default-artifact-root", str(self.workdir / "artifacts"), "--workers", "1"],
            # Without MLflow's job runner (GenAI jobs and trace roll-ups, which nothing here uses): it
            # would start about seven huey consumer processes per server on a 2-core machine.
            env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        import urllib.request

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.workdir / 'mlflow-server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.kill()  # not left running (with its uvicorn worker) after the test that gave up on it
        raise RuntimeError("mlflow server did not come up")

    def kill(self) -> None:
        """SIGKILL the whole server process group (no clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server for the session (private port and data directory); each test
    that needs a store takes a fresh database from it (:meth:`PostgresServer.new_database`)."""
    from tests.helpers.postgres import PostgresServer, missing_reason

    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_server_pg(tmp_path, postgres):
    """A real ``mlflow server`` whose backend store is a fresh database on the real PostgreSQL
    server: MLflow's own advice for many concurrent writers."""
    server = MlflowServer(tmp_path, backend_store_uri=postgres.new_database())
    server.start(timeout_s=180.0)  # the first start creates MLflow's tables
    yield server
    server.kill()


@pytest.fixture
def proxy(mlflow_server):
    """``proxy(**faults)``: a misbehaving HTTP proxy in front of ``mlflow_server``
    (:class:`tests.helpers.proxy.FaultyProxy`: latency, HTTP 500 after forwarding, dropped
    connections); closed after the test."""
    from tests.helpers.proxy import FaultyProxy

    made = []

    def make(**kw) -> FaultyProxy:
        made.append(FaultyProxy(mlflow_server.uri, **kw))
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.fixture
def driven_tracker(energy_home, sqlite_uri):
    """The process's tracker (what ``energy.*`` uses) on an injected clock, measuring a flat 100 W
    replay trace (the hardware seam) and logging to ``sqlite_uri``: ``(tracker, ticks, uri)``."""
    from ipython_energy.config import from_env
    from ipython_energy.meter import Meter
    from ipython_energy.runtime import new_tracker, set_tracker
    from ipython_energy.sensors.replay import ReplaySensor, ReplayTrace
    from tests.sensors.injected_clock import Clock, Ticks

    clock = Clock()
    meter = Meter([ReplaySensor(ReplayTrace([0.0, 36000.0], {"gpu0_w": [100.0, 100.0]}), clock=clock)],
                  interval_s=0.05, clock=clock, background=False, idle_power_w=0.0)
    meter.start()
    config, _ = from_env()
    tracker = new_tracker(config.with_values(tracking_uri=sqlite_uri), meter=meter)
    set_tracker(tracker)
    yield tracker, Ticks(meter.sampler, clock), sqlite_uri
    set_tracker(None)
    tracker.close()


@pytest.fixture
def tracker(energy_home, sqlite_uri):
    """The process's tracker, measuring a flat 100 W replay trace (the hardware seam) and logging
    to the test's store."""
    from ipython_energy.runtime import set_tracker
    from tests.faults.faultkit import flat_replay, make_tracker

    t = make_tracker([flat_replay({"gpu0": 100.0})], sqlite_uri)
    set_tracker(t)
    yield t
    t.close()
    set_tracker(None)
