"""Transitional: ``from read_log import ...`` in the fault tests, until they import ``tests.sensors.read_log``."""

from tests.sensors.read_log import *  # noqa: F401,F403
