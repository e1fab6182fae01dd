"""Transitional: ``from layout_data import ...`` in the browser tests, until they import ``tests.server.layout_data``."""

from tests.server.layout_data import *  # noqa: F401,F403
