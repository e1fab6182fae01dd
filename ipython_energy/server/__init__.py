"""Jupyter server extension: read-only energy API for the JupyterLab sidebar.

Routes live under ``/ipython-energy/api/``.  Every handler is a thin, authenticated
wrapper over :mod:`ipython_energy.query`; no route accepts a tracking URI, path or URL.
"""

from __future__ import annotations


def _load_jupyter_server_extension(serverapp) -> None:
    from .handlers import setup_handlers

    setup_handlers(serverapp)


# Older jupyter_server versions look for this name.
load_jupyter_server_extension = _load_jupyter_server_extension
