"""An injected monotonic clock and the sampler's tick schedule, for tests that drive the sampler
themselves (``Sampler(..., background=False)`` / ``Meter(..., background=False)`` and
:meth:`Sampler.tick`) instead of sleeping while its thread runs.

Sensors at the seam read the same clock (the replay sensor's ``clock=``, ``FakeGpu(clock=...)``),
so every timestamp and every reading is a function of where the test has moved the clock: the
results are exact and do not depend on how loaded the machine is.
"""

from __future__ import annotations

GOLDEN = 0.6180339887498949


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Ticks:
    """Takes a driven sampler's ticks on the sampler thread's schedule while a test lets time pass.

    Every ``interval_s``; dithered by the golden-ratio sequence over the interval when ``dither``
    (the sampler does so when a counter updates slowly, so that reads fall at all phases of its
    updates); after ``probe_ticks`` ticks every ``probe_s`` right after the start when ``probe_s``
    is given (the sampler's dense first reads of a slowly updating counter).
    """

    def __init__(self, sampler, clock: Clock, *, dither: bool = False, probe_s: float | None = None,
                 probe_ticks: int = 12):
        self.sampler = sampler
        self.clock = clock
        self.interval_s = sampler.interval_s
        self.dither = dither
        self.probe_s = probe_s
        self.probe_left = probe_ticks if probe_s is not None else 0
        self.k = 0
        self.g_prev = 0.0
        self.next_t = clock() + self._step()

    def _step(self) -> float:
        if self.probe_left:
            self.probe_left -= 1
            return self.probe_s
        if not self.dither:
            return self.interval_s
        self.k += 1
        g = (self.k * GOLDEN) % 1.0
        step = self.interval_s * (1.0 + g - self.g_prev)
        self.g_prev = g
        return step

    def run(self, seconds: float) -> None:
        """Let ``seconds`` pass on the clock, with the sampler's ticks that fall in them."""
        end = self.clock() + seconds
        while self.next_t <= end:
            self.clock.t = self.next_t
            self.sampler.tick()
            self.next_t += self._step()
        self.clock.t = end
