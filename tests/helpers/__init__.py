"""Helpers shared by the tests, imported by name::

    from tests.helpers.kernel import Kernel
    from tests.helpers.mlflow_readback import runs, split_sweep
    from tests.helpers.waiting import wait_until
    from tests.helpers.net import free_port

* :mod:`.kernel`: a real Jupyter kernel (ipykernel through jupyter_client): start, execute, collect
  its output, SIGKILL, restart.
* :mod:`.mlflow_readback`: what MLflow holds, read back with the MLflow client, as a user would.
* :mod:`.waiting`: wait until a condition holds, or fail the test with a message.
* :mod:`.net`: a free local port, and the sockets a process listens on.
* :mod:`.registry_files`: the ``kernels/`` and ``live/`` files a kernel writes under
  IPYTHON_ENERGY_HOME, written for tests that need a kernel without running one.

The fixtures built on them are in ``tests/conftest.py``: ``start_kernel`` (kernels shut down at
teardown), ``sqlite_uri`` (an empty store of the test's own), ``mlflow_server``.

The fakes at the hardware seam stay beside the tests of the hardware they stand in for
(``tests/sensors/fake_pynvml.py``, ``tests/sensors/read_log.py``, ``tests/sensors/injected_clock.py``,
``tests/faults/faultkit.py``) and import as ``tests.sensors.fake_pynvml``, ``tests.faults.faultkit``
and so on.  Nothing here replaces any part of the product: each helper sits above it (driving or
reading back) or beside it (a free port).
"""
