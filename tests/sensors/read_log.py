"""A log of a fake sensor's reads, for tests that check where a gap lies.

A gap runs from the sensor's last good read before a fault to its first good read after it
(docs/sensors.md).  On a loaded machine those reads can lie far from where the test body turned
the fault on and off: a process that stalls for half a second reads nothing meanwhile, and its
gap honestly starts at the read before the stall.  So these tests compare a gap with the reads
that really happened, not with the sleeps in the test body.

A read is logged at the moment the sensor is called; the sampler stamps it at the middle of the
call, a few microseconds later (:data:`TOLERANCE_S` covers it).
"""

from __future__ import annotations

import time

TOLERANCE_S = 0.005


class ReadLog:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.reads: list[tuple[float, bool]] = []  # (time, good), appended by the reading thread

    def add(self, good: bool) -> None:
        self.reads.append((self.clock(), good))

    def bad_stretch(self) -> tuple[float, float]:
        """``(t_before, t_after)``: the last good read before the first bad one, and the first good
        read after the last bad one.  The gap (or gaps) recorded for the fault must span exactly that."""
        reads = list(self.reads)
        bad = [i for i, (_, good) in enumerate(reads) if not good]
        assert bad, "the sensor was never read while it was failing"
        before = [t for t, good in reads[:bad[0]] if good]
        after = [t for t, good in reads[bad[-1] + 1:] if good]
        assert before and after, "no good read on both sides of the failing reads"
        return before[-1], after[0]
