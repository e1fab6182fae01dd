"""Helpers shared by the fault tests: warning counting, fake sensors at the seam, a tracker on them.

Everything here sits either above the product (reading MLflow back, counting what the user saw)
or exactly at the hardware seam (sensor classes that implement the small Sensor protocol and
misbehave on request).  Nothing in between is replaced.
"""

from __future__ import annotations

import math
import re
import threading
import time
from typing import Iterable

from ipython_energy.sensors.base import DomainInfo, DomainReading
from ipython_energy.sensors.replay import ReplaySensor, ReplayTrace
from tests.helpers.mlflow_readback import (assert_one_total_per_step, assert_sweep_total_exact, history,  # noqa: F401
                                           split_sweep)  # (re-exported)
from tests.helpers.mlflow_readback import runs as mlflow_runs  # noqa: F401  (re-exported)
from tests.helpers.waiting import wait_until  # noqa: F401  (re-exported)
from tests.sensors.read_log import ReadLog

OUTAGE_WARNING = re.compile(r"ipython-energy: (MLflow at .* is not answering|cannot write the local spool)")
RECOVERY_NOTE = "ipython-energy: MLflow is answering again"
#: A backend that answers late is "slow" (one line when it begins, one when it ends), not down.
SLOW_WARNING = re.compile(r"ipython-energy: MLflow at .* is slow \(")
SLOW_END_NOTE = "is answering promptly again"
SPOOL_RECOVERY_NOTE = "ipython-energy: the local spool can be written again"


def figure(capfd, text: str) -> None:
    """A measured figure for docs/reliability.md, printed past the capture (visible with ``-s``)."""
    with capfd.disabled():
        print(f"\nFIGURE {text}")


def log_noise(caplog) -> list[str]:
    """WARNING-or-worse log records that reached the root logger.

    In a kernel the root logger has no handler, so such records are printed by logging's
    last-resort handler under whatever cell is running: the user sees them as well.
    """
    import logging

    return [f"{r.name}: {r.getMessage()}"[:300] for r in caplog.records if r.levelno >= logging.WARNING]


def slow_warnings(stderr: str) -> list[str]:
    """The "MLflow is slow" lines a user saw on stderr."""
    return [line for line in stderr.splitlines() if SLOW_WARNING.search(line)]


def outage_warnings(stderr: str) -> list[str]:
    """The outage warnings a user saw on stderr (one line each)."""
    return [line for line in stderr.splitlines() if OUTAGE_WARNING.search(line)]


def flat_replay(watts: dict[str, float], **kw) -> ReplaySensor:
    """Replay sensor (the hardware seam): a flat trace, so truth = watts x seconds."""
    return ReplaySensor(ReplayTrace([0, 36000], {f"{k}_w": [v, v] for k, v in watts.items()}), **kw)


class Misbehaving:
    """A sensor at the seam that reads a true flat counter and misbehaves when told to.

    ``mode`` is one of ``ok``, ``raise``, ``hang``, ``nan`` (NaN energy), ``negative``
    (negative energy), ``low_once`` (one read lower than the counter, then ``ok`` again),
    ``low`` (reads at half the counter) or ``zero`` (reads 0 J) until set back to ``ok``.
    :meth:`reset_now` restarts the counter from 0 (it keeps counting from there).  The counter
    starts at ``base_j``; the true counter (``true_j``) never stops.  ``log`` records every read
    and whether it was good (mode ``ok``).
    """

    name = "misbehaving"

    def __init__(self, domain: str = "package0", power_w: float = 50.0, clock=time.monotonic,
                 base_j: float = 0.0):
        self.domain = domain
        self.base_j = base_j
        self.power_w = power_w
        self.clock = clock
        self.t0 = clock()
        self.mode = "ok"
        self.reset_at: float | None = None
        self.release = threading.Event()
        self.reads = 0
        self.hanging = 0
        self.log = ReadLog(clock)

    def true_j(self, t: float | None = None) -> float:
        t = self.clock() if t is None else t
        return self.base_j + (t - self.t0) * self.power_w

    def domains(self):
        return [DomainInfo(self.domain, "cpu", "counter", self.name, update_period_s=0.0)]

    def read(self):
        self.reads += 1
        mode = self.mode
        self.log.add(mode == "ok")
        if mode == "raise":
            raise OSError(5, "Input/output error")
        if mode == "hang":
            self.hanging += 1
            self.release.wait(30)
            self.hanging -= 1
        e = self.true_j()
        if mode == "nan":
            return {self.domain: DomainReading(energy_j=math.nan, power_w=self.power_w)}
        if mode == "negative":
            return {self.domain: DomainReading(energy_j=-e, power_w=self.power_w)}
        if mode == "low_once":
            self.mode = "ok"
            e = e * 0.5
        elif mode == "low":
            e = e * 0.5
        elif mode == "zero":
            e = 0.0
        elif self.reset_at is not None:
            e = e - self.true_j(self.reset_at)
        return {self.domain: DomainReading(energy_j=e, power_w=self.power_w)}

    def reset_now(self) -> None:
        """The counter restarts from 0 (a driver reload) and keeps counting from there."""
        self.reset_at = self.clock()

    def state(self):
        return {}

    def close(self):
        self.release.set()


def median(xs: Iterable[float]) -> float:
    import statistics

    return statistics.median(list(xs))


def make_tracker(sensors, uri: str, **meter_kw):
    """A Tracker measuring with ``sensors`` (the seam) and logging to ``uri``, configured like the magic's."""
    from ipython_energy import config as cfg
    from ipython_energy.meter import Meter
    from ipython_energy.runtime import new_tracker

    config, _ = cfg.from_env()
    config = config.with_values(tracking_uri=uri)
    meter_kw.setdefault("interval_s", 0.05)
    return new_tracker(config, meter=Meter(sensors, **meter_kw))
