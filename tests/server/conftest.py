"""Fixtures for the sidebar's server side: a real in-process Jupyter server (pytest-jupyter),
a real MLflow sqlite store, kernel registrations written as ``%load_ext`` writes them.

pytest-jupyter's fixtures are imported here rather than through ``pytest_plugins`` so that
this directory also runs inside a whole-suite invocation.  Browser tests must run in a
separate pytest invocation (playwright and pytest-jupyter conflict in one process).
"""

from __future__ import annotations

import json

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403  (jp_fetch, jp_serverapp, ...)

from tests.helpers.registry_files import write_kernel_record, write_live_record

# The names the server tests use for the registry files a kernel writes (tests/helpers/registry_files.py).
register_kernel = write_kernel_record
write_live = write_live_record


@pytest.fixture
def tracking(tmp_path):
    """A real MLflow sqlite store outside the server's root dir, and a client on it."""
    from mlflow.tracking import MlflowClient

    store = tmp_path / "elsewhere"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


@pytest.fixture
def jp_server_config(energy_home):
    return {"ServerApp": {"jpserver_extensions": {"ipython_energy": True}}}


def payload(response) -> dict:
    return json.loads(response.body.decode())
