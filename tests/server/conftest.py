"""Fixtures for the sidebar's server side: a real in-process Jupyter server (pytest-jupyter),
a real MLflow sqlite store, kernel registrations written as ``%load_ext`` writes them.

pytest-jupyter's fixtures are imported here rather than through ``pytest_plugins`` so that
this directory also runs inside a whole-suite invocation.  Browser tests must run in a
separate pytest invocation (playwright and pytest-jupyter conflict in one process).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403  (jp_fetch, jp_serverapp, ...)

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def tracking(tmp_path):
    """A real MLflow sqlite store outside the server's root dir, and a client on it."""
    from mlflow.tracking import MlflowClient

    store = tmp_path / "elsewhere"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


def register_kernel(home: Path, tracking_uri: str, experiment: str, *, session: str = "s1",
                    pid: int | None = None, cwd: str = "/nonexistent/notebook/dir") -> Path:
    """A kernel registration file as ``%load_ext ipython_energy`` writes it (docs/metrics.md)."""
    from ipython_energy.paths import write_json_atomic

    kernels = home / "kernels"
    kernels.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = kernels / f"{session}.json"
    write_json_atomic(path, {"session": session, "pid": os.getpid() if pid is None else pid,
                             "tracking_uri": tracking_uri, "experiment_name": experiment, "cwd": cwd,
                             "started_at": time.time()})
    return path


def write_live(home: Path, session: str, **fields) -> Path:
    """A live/<session>.json as the tracker writes it every second."""
    from ipython_energy.paths import write_json_atomic

    live = home / "live"
    live.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {"session": session, "pid": os.getpid(), "updated_at": time.time(), "power_w": 12.5,
            "domains": {"cpu": 12.5}, "methods": {"cpu": "estimated"}, "estimated": True,
            "tracking_uri": "sqlite:///x.db", "experiment": "ipython-energy", "duration_s": 100.0,
            "total_j": 1250.0, "cells_j": 1000.0, "between_cells_j": 250.0,
            "active_run": None, "active_sweep": None, **fields}
    path = live / f"{session}.json"
    write_json_atomic(path, data)
    return path


@pytest.fixture
def jp_server_config(energy_home):
    return {"ServerApp": {"jpserver_extensions": {"ipython_energy": True}}}


def payload(response) -> dict:
    return json.loads(response.body.decode())
