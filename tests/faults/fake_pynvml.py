"""Transitional: ``from fake_pynvml import ...`` in the fault tests, until they import ``tests.sensors.fake_pynvml``."""

from tests.sensors.fake_pynvml import *  # noqa: F401,F403
