"""The kernel registry: ``kernels/<session>.json`` and ``live/<session>.json`` under IPYTHON_ENERGY_HOME.

This module owns both file formats. A kernel that loaded the extension writes

* ``kernels/<session>.json`` once, at load: where it logs (its resolved tracking URI and
  experiment), so that a Jupyter server started elsewhere knows which stores to show;
* ``live/<session>.json`` every second: its power now, its session's energy and its active run
  and sweep, for the sidebar's session card.

Both are removed when the kernel closes; the readers leave out files whose process is gone.
Files are written atomically (0600 in 0700 folders), so a reader sees a whole file or none.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from . import paths
from .rollup import number, whole

KERNELS = "kernels"
LIVE = "live"
#: The session's three parts (:meth:`ipython_energy.meter.Meter.session`), each as ``<part>_j``, ``<part>_s``.
SESSION_PARTS = ("in_runs", "other_cells", "idle")
#: The numbers of a live file the sidebar shows (anything else unreadable in them becomes None).
#: ``cells_j`` and ``between_cells_j`` are what kernels of the previous version wrote (and what
#: this one still writes for sidebars of that version): ``in_runs_j`` and the rest.
_LIVE_FIGURES = ("power_w", "total_j", "cells_j", "between_cells_j", "duration_s",
                 *(f"{part}_{unit}" for part in SESSION_PARTS for unit in ("j", "s")))


class KernelRecord(NamedTuple):
    """``kernels/<session>.json``: one kernel that loaded the extension, and where it logs."""

    session: str
    pid: int | None
    tracking_uri: str
    experiment_name: str
    cwd: str | None = None
    started_at: float = 0.0

    @property
    def alive(self) -> bool:
        return self.pid is not None and paths.pid_alive(self.pid)


def register_kernel(record: KernelRecord, home: Path | None = None) -> None:
    """Write ``record`` (raises OSError when IPYTHON_ENERGY_HOME cannot be written)."""
    paths.write_json_atomic(paths.private_dir(KERNELS, base=home) / f"{record.session}.json", record._asdict())


def session_figures(session: Mapping[str, float]) -> dict[str, float]:
    """The session's figures as the live file carries them: :meth:`Meter.session`'s keys, plus the
    two a sidebar of the previous version reads (``cells_j`` = ``in_runs_j``; ``between_cells_j`` =
    ``other_cells_j`` + ``idle_j``)."""
    out = dict(session)
    out["cells_j"] = session.get("in_runs_j", 0.0)
    out["between_cells_j"] = session.get("other_cells_j", 0.0) + session.get("idle_j", 0.0)
    return out


def write_live(session: str, state: Mapping[str, Any], home: Path | None = None) -> None:
    """Replace the live state of ``session`` (the shape :func:`live_sessions` reads)."""
    paths.write_json_atomic(paths.private_dir(LIVE, base=home) / f"{session}.json", dict(state))


def unregister(session: str, home: Path | None = None) -> None:
    """Remove both files of ``session`` (missing files are fine)."""
    base = home or paths.home()
    for sub in (KERNELS, LIVE):
        try:
            (base / sub / f"{session}.json").unlink()
        except FileNotFoundError:
            pass


def _files(home: Path | None, sub: str) -> list[tuple[Path, dict[str, Any]]]:
    try:
        files = sorted(((home or paths.home()) / sub).glob("*.json"))
    except OSError:
        return []
    out = []
    for path in files:
        data = paths.read_json(path)
        if isinstance(data, dict):
            out.append((path, data))
    return out


def kernels(home: Path | None = None) -> list[KernelRecord]:
    """Every readable kernel registration, alive or not (see :attr:`KernelRecord.alive`)."""
    out = []
    for path, data in _files(home, KERNELS):
        if not isinstance(data.get("tracking_uri"), str):
            continue
        pid = whole(data.get("pid"))
        out.append(KernelRecord(
            session=str(data.get("session") or path.stem),
            pid=pid,
            tracking_uri=data["tracking_uri"],
            experiment_name=str(data.get("experiment_name") or ""),
            cwd=data.get("cwd") if isinstance(data.get("cwd"), str) else None,
            started_at=number(data.get("started_at")) or 0.0,
        ))
    return out


def live_sessions(home: Path | None = None, now: float | None = None,
                  stale_after_s: float = 10.0) -> list[dict[str, Any]]:
    """This user's live kernels, newest first, as plain validated dicts.

    Each entry: ``session``, ``power_w``, ``total_j`` (the session's energy),
    ``in_runs_j``, ``other_cells_j`` and ``idle_j`` (its three parts; ``_s``: their durations;
    None in files of kernels of the previous version, which wrote only ``cells_j`` and
    ``between_cells_j``: the sidebar then shows those two), ``duration_s``, ``estimated``, ``methods``, ``experiment``, ``active_run`` /
    ``active_sweep``, ``updated_at`` and ``age_s``.  Files of dead kernels (pid gone) are left
    out; a live kernel whose file is older than ``stale_after_s`` is marked ``stale``.
    """
    now = time.time() if now is None else now
    sessions = []
    for path, data in _files(home, LIVE):
        pid = whole(data.get("pid"))
        if pid is not None and not paths.pid_alive(pid):
            continue
        updated = number(data.get("updated_at")) or 0.0
        age = max(0.0, now - updated)
        active_run = data.get("active_run") if isinstance(data.get("active_run"), dict) else None
        active_sweep = data.get("active_sweep") if isinstance(data.get("active_sweep"), dict) else None
        methods = data.get("methods") if isinstance(data.get("methods"), dict) else {}
        sessions.append({
            "session": str(data.get("session") or path.stem),
            **{key: number(data.get(key)) for key in _LIVE_FIGURES},
            "estimated": bool(data.get("estimated")),
            "methods": {str(k): str(v) for k, v in methods.items()},
            "experiment": data.get("experiment"),
            "active_run": None if active_run is None else {
                "name": str(active_run.get("name", "")), "energy_j": number(active_run.get("energy_j"))},
            "active_sweep": None if active_sweep is None else {
                "name": str(active_sweep.get("name", "")), "total_j": number(active_sweep.get("total_j")),
                "runs": whole(active_sweep.get("runs"))},
            "updated_at": updated,
            "age_s": age,
            "stale": age > stale_after_s,
        })
    sessions.sort(key=lambda s: -s["updated_at"])
    return sessions
