"""The ``kernels/`` and ``live/`` files that a kernel with the extension loaded keeps under
IPYTHON_ENERGY_HOME (docs/metrics.md), written here for tests that need such a kernel to be seen
(by the sidebar's server, by a query) without starting one.

Both go through :mod:`ipython_energy.registry`, which owns the file format.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ipython_energy import registry


def write_kernel_record(home: Path, tracking_uri: str, experiment: str, *, session: str = "s1",
                        pid: int | None = None, cwd: str = "/nonexistent/notebook/dir",
                        started_at: float | None = None) -> Path:
    """A kernel registration as ``%load_ext ipython_energy`` writes it: where that kernel logs.

    ``pid`` defaults to this process (alive, so readers keep the record).
    """
    registry.register_kernel(registry.KernelRecord(
        session, os.getpid() if pid is None else pid, tracking_uri, experiment, cwd,
        time.time() if started_at is None else started_at), home)
    return home / registry.KERNELS / f"{session}.json"


def write_live_record(home: Path, session: str, *, defaults: bool = True, **fields: Any) -> Path:
    """A ``live/<session>.json`` as the tracker writes it every second.

    With ``defaults``, a complete record of a kernel drawing 12.5 W (estimated, cpu only) for
    100 s, with no active run or sweep, that ``fields`` override; without, only ``session``, ``pid``,
    ``updated_at`` and ``fields``.
    """
    data: dict[str, Any] = {"session": session, "pid": os.getpid(), "updated_at": time.time()}
    if defaults:
        data.update({"power_w": 12.5, "domains": {"cpu": 12.5}, "methods": {"cpu": "estimated"},
                     "estimated": True, "tracking_uri": "sqlite:///x.db", "experiment": "ipython-energy",
                     "duration_s": 100.0, "total_j": 1250.0, "cells_j": 1000.0, "between_cells_j": 250.0,
                     "active_run": None, "active_sweep": None})
    data.update(fields)
    registry.write_live(session, data, home)
    return home / registry.LIVE / f"{session}.json"
