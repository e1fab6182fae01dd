"""What spans all domains: a window edge (:class:`Snapshot`, every domain's
:class:`~ipython_energy.series.Mark` at one instant) and what windows need from every tick
(:class:`TickTally`, which the sampler updates after each stored tick without calling back into
the meter).  Arithmetic over :class:`~ipython_energy.series.DomainSeries` only: no threads, no
locks of its own (the sampler's store lock guards it), nothing written anywhere.
"""

from __future__ import annotations

from typing import Mapping

from .series import DomainSeries, Mark


class Snapshot:
    """Every domain's :class:`Mark` at one instant, and the total power then (a window edge).

    Take it with the sampler's store lock held, after :meth:`Sampler.sync`.
    """

    __slots__ = ("t", "marks", "power_w")

    def __init__(self, t: float, series: Mapping[str, DomainSeries]):
        self.t = t
        marks: dict[str, Mark] = {}
        total_p = 0.0
        for name, s in series.items():
            marks[name] = s.mark(t)
            p = s.power_now_w()
            if p is not None:
                total_p += p
        self.marks = marks
        #: Total power over all domains at ``t`` (watts), for the window's peak.
        self.power_w = total_p

    @property
    def pending(self) -> bool:
        """True while some domain's mark was extrapolated and may still be refined."""
        return not all(m.final for m in self.marks.values())

    def refine(self, series: Mapping[str, DomainSeries]) -> None:
        for name, m in self.marks.items():
            if not m.final:
                series[name].refine(m)


class TickTally:
    """What windows need from every tick, worked out right after the tick's readings are stored.

    The sampler runs :meth:`after_tick` for each stored tick (:meth:`Sampler.sync`, under its store
    lock, on whichever thread syncs); it is arithmetic over the series and calls nothing outside
    them.  Whoever keeps windows (:class:`~ipython_energy.meter.Meter`) says what to watch, under
    the same lock, and reads the results:

    * ``watch_peak``: while True, :attr:`peak_w` keeps the highest total power seen by a tick
      (the caller resets it);
    * ``pending``: snapshots whose marks were extrapolated, refined at each tick and dropped once final;
    * ``quiet_target_s``: while set and :attr:`quiet_power_w` is None (and ``watch_peak`` is
      False), the energy over consecutive quiet ticks is added up until it spans that many
      seconds; :attr:`quiet_power_w` is then its mean power.  :meth:`interrupt` (a window began
      or ended) restarts the stretch at the next tick.
    """

    __slots__ = ("series", "_all", "watch_peak", "peak_w", "pending", "quiet_target_s", "quiet_power_w",
                 "_quiet_j", "_quiet_s", "_quiet_prev", "_interrupted")

    def __init__(self, series: Mapping[str, DomainSeries]):
        self.series = series
        self._all = list(series.values())
        self.watch_peak = False
        self.peak_w = 0.0
        self.pending: list[Snapshot] = []
        self.quiet_target_s: float | None = None
        self.quiet_power_w: float | None = None
        self._quiet_j = 0.0
        self._quiet_s = 0.0
        self._quiet_prev: tuple[float, float] | None = None
        self._interrupted = True

    @property
    def active(self) -> bool:
        """True while the ticks serve a window: one is open (peaks), a snapshot waits for later
        samples to refine it, or the idle baseline is being measured.  While False, the sampler
        reads its ``slow_when_idle`` sensors at its idle interval only.  (Read without the lock by
        the sampler thread: three attribute reads, each of them atomic.)"""
        return bool(self.watch_peak or self.pending
                    or (self.quiet_target_s is not None and self.quiet_power_w is None))

    def interrupt(self) -> None:
        """A window began or ended: the tick after this does not count as quiet time."""
        self._interrupted = True

    def after_tick(self, now: float) -> None:
        """Update the tallies for a tick at ``now`` whose readings were just stored.  Caller holds
        the sampler's store lock."""
        if self.watch_peak:
            total_p = 0.0
            for s in self._all:
                p = s.power_now_w()
                if p is not None:
                    total_p += p
            if total_p > self.peak_w:
                self.peak_w = total_p
        elif self.quiet_target_s is not None and self.quiet_power_w is None:
            self._add_quiet(now)
        if self.pending:
            series = self.series
            for snap in self.pending:
                snap.refine(series)
            self.pending = [snap for snap in self.pending if snap.pending]

    def _add_quiet(self, now: float) -> None:
        series = self._all
        if not series or any(len(s.points) < 2 for s in series if s.last_good_t is not None):
            return
        total = 0.0
        for s in series:
            e, _ = s.energy_at(now)
            if e is not None:
                total += e
        if not self._interrupted and self._quiet_prev is not None:
            t0, e0 = self._quiet_prev
            if now > t0 and total >= e0:
                self._quiet_j += total - e0
                self._quiet_s += now - t0
        self._quiet_prev = (now, total)
        self._interrupted = False
        if self._quiet_s >= self.quiet_target_s:
            self.quiet_power_w = self._quiet_j / self._quiet_s
