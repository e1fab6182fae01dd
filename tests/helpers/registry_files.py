"""The ``kernels/`` and ``live/`` files that a kernel with the extension loaded keeps under
IPYTHON_ENERGY_HOME (docs/metrics.md), written here for tests that need such a kernel to be seen
(by the sidebar's server, by a query) without starting one.

Every file goes through :func:`_write_record`, the one place that knows the file layout.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def _write_record(home: Path, kind: str, session: str, data: dict[str, Any]) -> Path:
    """Write ``<home>/<kind>/<session>.json`` atomically, 0600 in a 0700 folder, as the kernel does."""
    from ipython_energy.paths import write_json_atomic

    folder = home / kind
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{session}.json"
    write_json_atomic(path, data)
    return path


def write_kernel_record(home: Path, tracking_uri: str, experiment: str, *, session: str = "s1",
                        pid: int | None = None, cwd: str = "/nonexistent/notebook/dir",
                        started_at: float | None = None) -> Path:
    """A kernel registration as ``%load_ext ipython_energy`` writes it: where that kernel logs.

    ``pid`` defaults to this process (alive, so readers keep the record).
    """
    return _write_record(home, "kernels", session, {
        "session": session, "pid": os.getpid() if pid is None else pid, "tracking_uri": tracking_uri,
        "experiment_name": experiment, "cwd": cwd, "started_at": time.time() if started_at is None else started_at})


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
    return _write_record(home, "live", session, data)
