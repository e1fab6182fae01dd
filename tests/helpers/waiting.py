"""Waiting for something another thread or process does."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float = 30.0, poll_s: float = 0.02,
               what: str = "") -> T:
    """Call ``predicate`` every ``poll_s`` seconds until it returns something truthy; return that.

    Fails the test (AssertionError naming ``what``) if it has not within ``timeout_s`` seconds.
    The predicate is called once more at the deadline, so a slow machine that oversleeps the last
    poll does not fail a condition that holds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or 'condition'} not met within {timeout_s} s")
        time.sleep(poll_s)
