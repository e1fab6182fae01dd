"""The process's tracker, put together from its parts: the one place that wires the rooms.

The write side (tracking, writer, store) never imports the read side (query, charts, server);
what it needs from there, the renderer of a sweep's ``energy_sweep.html`` artifact, is handed
in here.  ``%load_ext``, the public functions of the package and the tests all make their
tracker through :func:`new_tracker`.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

from .config import Config
from .tracking import Tracker

_tracker: Tracker | None = None
_lock = threading.Lock()


def render_sweep_html(sweep_data: Mapping[str, Any]) -> str:
    """The sweep's chart as a standalone HTML page (altair is imported on the writer's thread, here)."""
    from .charts import sweep_html

    return sweep_html(sweep_data)


def new_tracker(config: Config, **kwargs: Any) -> Tracker:
    """A tracker whose sweeps save their chart to MLflow; ``kwargs`` go to :class:`Tracker`."""
    kwargs.setdefault("render_chart", render_sweep_html)
    return Tracker(config, **kwargs)


def current() -> Tracker | None:
    """The process's tracker, or None before the first use (and after ``%unload_ext``)."""
    return _tracker


def get_tracker(config: Config | None = None) -> Tracker:
    """The process's tracker, made on first use from ``config`` or the environment's configuration."""
    global _tracker
    if _tracker is None:
        with _lock:
            if _tracker is None:
                if config is None:
                    from .config import from_env

                    config, _warnings = from_env()
                _tracker = new_tracker(config)
    return _tracker


def set_tracker(tracker: Tracker | None) -> None:
    """Replace the process's tracker (None: the next use makes a new one)."""
    global _tracker
    with _lock:
        _tracker = tracker
