"""A real Jupyter kernel (ipykernel through jupyter_client), driven as a notebook front end drives it."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Iterable


def energy_env(energy_home: Path, trace: Path, tracking_uri: str, **more: str) -> dict[str, str]:
    """The environment of a kernel that measures with the replay sensor on ``trace`` (the hardware
    seam) and logs to ``tracking_uri``, with its own IPYTHON_ENERGY_HOME; ``more`` adds variables.

    The kernel gets this process's ``sys.path`` as PYTHONPATH, so it imports the same
    ``ipython_energy`` as the test.
    """
    env = dict(os.environ)
    env.update({"IPYTHON_ENERGY_HOME": str(energy_home), "IPYTHON_ENERGY_SENSORS": f"replay:{trace}",
                "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": os.pathsep.join(sys.path)})
    env.update(more)
    return env


class Kernel:
    """One ``python3`` kernel process and a client connected to it.

    :meth:`execute` runs a cell and returns what it printed; :meth:`submit` and :meth:`wait` do
    the same in two steps, so that several kernels can run cells at once.
    """

    def __init__(self, cwd: Path, env: dict[str, str], extra_arguments: Iterable[str] = (),
                 ready_timeout_s: float = 60.0):
        from jupyter_client.manager import KernelManager

        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(env=env, cwd=str(cwd), extra_arguments=list(extra_arguments))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=ready_timeout_s)
        self.alive = True

    @property
    def pid(self) -> int:
        return self.manager.provisioner.pid

    def submit(self, code: str) -> str:
        """Send ``code`` for execution; return its message id (see :meth:`wait`)."""
        return self.client.execute(code)

    def wait(self, msg_id: str, timeout_s: float = 120.0, messages: list[dict[str, Any]] | None = None) -> str:
        """Wait until cell ``msg_id`` is done; return its stdout and stderr.

        Raises AssertionError with the kernel's traceback if the cell raised.  ``messages``, if
        given, collects every iopub message of the cell (widget comms, display data, ...).
        """
        out = []
        while True:
            msg = self.client.get_iopub_msg(timeout=timeout_s)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if messages is not None:
                messages.append(msg)
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)

    def execute(self, code: str, timeout_s: float = 120.0, messages: list[dict[str, Any]] | None = None) -> str:
        """Run ``code`` as a cell; return what it printed (see :meth:`wait`)."""
        return self.wait(self.submit(code), timeout_s, messages)

    def restart(self, ready_timeout_s: float = 60.0) -> None:
        """Restart the kernel as the notebook's restart button does (a clean shutdown, then a new process)."""
        self.manager.restart_kernel(now=False)
        self.client.wait_for_ready(timeout=ready_timeout_s)

    def sigkill(self) -> None:
        """SIGKILL the kernel process (no clean shutdown, as when the OOM killer takes it)."""
        os.kill(self.pid, signal.SIGKILL)
        self.manager.provisioner.process.wait(30)  # gone: the OS has released its files and locks
        self.client.stop_channels()
        self.manager.cleanup_resources()
        self.alive = False

    def shutdown(self) -> None:
        """Stop the kernel now (idempotent)."""
        if self.alive:
            self.client.stop_channels()
            self.manager.shutdown_kernel(now=True)
            self.alive = False
