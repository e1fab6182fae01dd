"""Update-phase estimation for a counter that only changes every ``period_s`` (NVML: ~100 ms).

A read of such a counter returns the value of its last update, not of "now".  :class:`PhaseLock`
finds when the updates happen from which reads saw the counter move and which did not, so that
:class:`~ipython_energy.series.DomainSeries` can store each value at its update time.
"""

from __future__ import annotations

import math

#: How fast the update phase may move while no read pair gives evidence, in seconds per second: the
#: counter's real period may differ a little from the nominal one (100 ppm, a common clock
#: crystal's tolerance: 1 ms in 10 s), so what was known about the phase widens by this much over a
#: stretch without evidence (a counter read only every couple of seconds between windows).  Reads
#: at every tick give evidence many times a second, so there it never widens by a whole bin.  Not
#: more: placements use the estimate's centre, and a wider estimate puts more reads that fall near
#: an update on the wrong side of it (in tests, 1e-3 made 1 s windows after idle stretches up to
#: 9 % off on ramps, against 0.5 % at 1e-4 and with reads at every tick).
DRIFT = 1e-4


class PhaseLock:
    """Estimates when a periodically updating counter updates, from the reads that saw it move.

    The phase of the updates within ``period_s`` is tracked as a set of feasible
    bins.  A read pair ``(a, b]`` shorter than the period in which the counter moved
    says an update fell in ``(a, b]``; one in which it did not move says none did.
    Conflicting evidence (the real period differs from the nominal one, or the
    counter stalled) resets the set to the latest evidence.  Between pieces of evidence the set
    widens by :data:`DRIFT` (see :meth:`age`).
    """

    BINS = 100

    def __init__(self, period_s: float):
        self.period_s = float(period_s)
        self._full = (1 << self.BINS) - 1
        self.feasible = self._full
        self._cache: tuple[int, float, int] | None = None
        self.resets = 0
        self._conflicts = 0
        # the feasible set as of the latest evidence, and when that came (see age())
        self._evidenced = self._full
        self._evidence_t: float | None = None

    def _bin(self, t: float) -> int:
        return int((t % self.period_s) / self.period_s * self.BINS) % self.BINS

    def _span(self, i: int, j: int) -> int:
        """Bits i..j inclusive, circularly."""
        n = self.BINS
        if i <= j:
            return ((1 << (j - i + 1)) - 1) << i
        return (((1 << (n - i)) - 1) << i) | ((1 << (j + 1)) - 1)

    def moved(self, a: float, b: float) -> None:
        """The counter changed between reads at ``a`` and ``b``."""
        if not 0 < b - a < self.period_s:
            return
        self.age(b)
        arc = self._span(self._bin(a), self._bin(b))
        self._apply(self.feasible & arc, arc)
        self._evidenced, self._evidence_t = self.feasible, b

    def still(self, a: float, b: float) -> None:
        """The counter did not change between reads at ``a`` and ``b`` (and it is known to be counting)."""
        if not 0 < b - a < self.period_s:
            return
        i, j = self._bin(a), self._bin(b)
        if (j - i) % self.BINS < 2:
            return
        self.age(b)
        inner = self._span((i + 1) % self.BINS, (j - 1) % self.BINS)
        self._apply(self.feasible & ~inner & self._full, self._full & ~inner)
        self._evidenced, self._evidence_t = self.feasible, b

    def age(self, t: float) -> None:
        """Widen the feasible set by what the phase may have moved since the latest evidence
        (:data:`DRIFT` times the time since, in whole bins, on both sides), never to the whole
        period: the estimate keeps its centre and loses its precision, so that reads after a long
        stretch without evidence narrow it again rather than conflict with it."""
        if self._evidence_t is None:
            return
        n = int((t - self._evidence_t) * DRIFT / self.period_s * self.BINS)
        if n <= 0:
            return
        f = base = self._evidenced
        full, size = self._full, self.BINS
        for k in range(1, min(n, size // 2) + 1):
            left = ((base << k) | (base >> (size - k))) & full  # rotated k bins, circularly
            right = ((base >> k) | (base << (size - k))) & full
            wider = f | left | right
            if wider == full:
                break
            f = wider
        self.feasible = f

    def _apply(self, new: int, fallback: int) -> None:
        """Keep ``new``; if it contradicts everything so far, ignore it unless it keeps happening."""
        if new:
            self.feasible = new
            self._conflicts = 0
            return
        self._conflicts += 1
        if self._conflicts >= 3:  # the real period differs from the nominal one: start over
            self.resets += 1
            self._conflicts = 0
            self.feasible = fallback

    def estimate(self) -> tuple[float, int]:
        """``(phase_s, width_bins)``: the estimated update phase within the period, in seconds, and the
        width of the feasible run it is the centre of, in bins (of ``period_s / BINS``); cached per
        feasible set."""
        f = self.feasible
        if self._cache is not None and self._cache[0] == f:
            return self._cache[1], self._cache[2]
        n = self.BINS
        bits = [(f >> k) & 1 for k in range(n)]
        best_len, best_start = 0, 0
        if all(bits):
            best_len, best_start = n, 0
        else:
            start = next(k for k in range(n) if not bits[k])  # begin scanning after a zero
            run = 0
            for step in range(1, n + 1):
                k = (start + step) % n
                if bits[k]:
                    run += 1
                    if run > best_len:
                        best_len, best_start = run, (k - run + 1) % n
                else:
                    run = 0
        centre = (best_start + best_len / 2.0) % n
        phase = centre / n * self.period_s
        self._cache = (f, phase, best_len)
        return phase, best_len

    @property
    def known(self) -> bool:
        """True once any evidence has narrowed the phase (before that, :meth:`last_update` assumes
        the counter is half a period stale)."""
        return self.feasible != self._full

    @property
    def locked(self) -> bool:
        """True when the update phase is known to within a twentieth of the period."""
        return self.estimate()[1] <= self.BINS // 20

    @property
    def uncertainty_s(self) -> float:
        """Width of the feasible run, in seconds: the phase is known to within plus or minus half this."""
        return self.estimate()[1] / self.BINS * self.period_s

    def last_update(self, t: float) -> float:
        """Estimated time of the last counter update at or before ``t``."""
        if not self.known:
            return t - self.period_s / 2.0
        phase, _ = self.estimate()
        return phase + math.floor((t - phase) / self.period_s) * self.period_s
