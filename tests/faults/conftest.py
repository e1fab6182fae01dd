"""Fixtures for the fault campaign: a real IPython shell with the extension loaded, on a real
MLflow store, with the hardware seam chosen per test (replay trace, fake pynvml, fake sysfs, or a
misbehaving sensor class from faultkit)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def open_shell(energy_home, monkeypatch, tmp_path):
    """``open_shell(env=..., tracker=..., cwd=..., warm=True)``: a real IPython shell with ``ipython_energy`` loaded.

    ``env`` sets environment variables before loading; ``tracker`` (a Tracker built on test
    sensors) is installed as the process's tracker so that the magic measures with it.
    With ``warm``, one cell (run ``warm-up``) is measured and flushed first.  The extension is
    unloaded (tracker closed, autolog off) at teardown.
    """
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.testing.globalipapp import start_ipython

    import ipython_energy
    from ipython_energy.runtime import set_tracker

    opened = []

    def open_(env: dict[str, str] | None = None, tracker=None, cwd: Path | None = None, warm: bool = True):
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        monkeypatch.chdir(cwd or tmp_path)
        start_ipython()
        shell = InteractiveShell.instance()
        if tracker is not None:
            set_tracker(tracker)
        ipython_energy.load_ipython_extension(shell)
        opened.append(shell)
        if warm:
            # The first logged cell makes the writer import mlflow and open the store, which holds
            # the GIL for up to ~0.3 s at a time on this machine; the faults are injected after it.
            assert shell.run_cell("%%energy --quiet --run warm-up\npass").success
            assert ipython_energy.flush(120)
        return shell

    yield open_
    for shell in opened:
        ipython_energy.unload_ipython_extension(shell)  # autolog off, the tracker closed and dropped
    set_tracker(None)

