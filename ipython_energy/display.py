"""What the magic shows: the line after a measured cell, ``%energy`` status, the load report, the live readout.

Pure text from finished objects (a Measurement, a Run, the Tracker's public state), except
:class:`LiveReadout`, which owns an ipywidgets line and the thread that refreshes it.
"""

from __future__ import annotations

import html
import threading
from typing import TYPE_CHECKING, Mapping

from .measurement import Measurement, format_energy

if TYPE_CHECKING:
    from .runs import Run
    from .tracking import Tracker


def _estimated_label(domain) -> str:
    """`` (estimated)`` for a domain whose method name does not already say so."""
    return " (estimated)" if domain.estimated and domain.method != "estimated" else ""


def summary_line(m: Measurement, run: Run, tracker: Tracker) -> str:
    """The line after a measured cell: the measurement, then the run's and sweep's standing."""
    extra = []
    if run.measurement is None or run.cells > 1:  # the cell is part of a longer run
        extra.append(f"run {run.name!r}: {format_energy(run.energy_j)}")
    if run.units and run.measurement is not None:
        for unit, n in run.units.items():
            extra.append(f"{format_energy(run.measurement.energy_j / n)}/{unit}")
    if run.sweep is not None:
        extra.append(run.sweep.describe())
    if not run.logged:  # --no-log, logging off, or nested in a run that is not logged
        extra.append("not logged")
    line = m.summary()
    return line + ("" if not extra else " · " + " · ".join(extra))


def load_report(tracker: Tracker) -> str:
    """The one line ``%load_ext`` prints: sensors with their methods, the period, where it logs."""
    found = ", ".join(f"{d.name} {d.method}{_estimated_label(d)}" for d in tracker.meter.domains) or "none"
    where = f"MLflow {tracker.tracking_uri}" if tracker.config.log else "MLflow logging off"
    notes = len(tracker.meter.notes) + len(tracker.notes)
    more = f" · {notes} note{'s' if notes > 1 else ''}: %energy" if notes else ""
    return f"ipython-energy: sensors: {found} · every {tracker.meter.interval_s:g} s · {where}{more}"


def journal_lines(journals) -> list[str]:
    """One line per earlier session's journal: what it holds and what becomes of it (``(Journal, state)`` pairs)."""
    return [f"session {j.session}: {j.describe()} — {state}" for j, state in journals]


def status_text(tracker: Tracker, journals=()) -> str:
    """``%energy`` alone: sensors and power now, idle baseline, session, run, sweep, MLflow.

    ``journals``: earlier sessions' journals still in the spool, as ``(Journal, state)`` pairs.
    """
    lines = ["ipython-energy status"]
    power = tracker.meter.power_now()
    for d in tracker.meter.domains:
        p = power.get(d.name)
        now = f"{p:.1f} W now" if p is not None else "no reading yet"
        updates = f"updates every {d.update_period_s:g} s" if d.update_period_s > 0 else "fresh at every read"
        lines.append(f"  {d.name}: {d.sensor}, {d.method}{_estimated_label(d)}, {updates} — {now}")
    if not tracker.meter.domains:
        lines.append("  no sensors: nothing can be measured (see docs/sensors.md)")
    for note in tracker.meter.notes + tracker.notes:
        lines.append(f"  note: {note}")
    idle = tracker.meter.idle_power_w
    lines.append(f"  idle baseline: {'unknown yet' if idle is None else f'{idle:.1f} W'} ({tracker.meter.idle_source})")
    lines.append(f"  {session_line(tracker.meter.session())}")
    lines.append(f"  run: {tracker.run.name!r} ({format_energy(tracker.run.energy_j)} so far)" if tracker.run
                 else "  run: none")
    lines.append(f"  {tracker.sweep.describe()}" if tracker.sweep else "  sweep: none")
    if tracker.config.log:
        lines.append(f"  MLflow: {tracker.tracking_uri}, experiment {tracker.config.experiment!r}")
        st = tracker.writer_status()
        if st is not None:
            if not st.backend_ok:
                state = f"NOT ANSWERING at {st.backend_uri or tracker.tracking_uri} ({st.last_error})"
            elif st.slow:
                state = f"slow ({st.slow_detail})"
            else:
                state = "ok"
            lines.append(f"  writer: {state}; {st.pending} event(s) waiting")
    else:
        lines.append("  MLflow: logging off")
    if journals:
        lines.append(f"  earlier sessions' journals ({len(journals)}; %energy spool deliver|discard SESSION|all):")
        lines.extend(f"    {line}" for line in journal_lines(journals))
    return "\n".join(lines)


def session_line(s: Mapping[str, float]) -> str:
    """The session in three parts that add up (``Meter.session``), as ``%energy`` status shows it."""
    def part(label: str, key: str) -> str:
        return f"{label} {format_energy(s.get(f'{key}_j', 0.0))} ({_seconds(s.get(f'{key}_s', 0.0))})"

    return (f"this session: {format_energy(s.get('total_j', 0.0))} in {_seconds(s.get('duration_s', 0.0))} — "
            f"{part('in runs', 'in_runs')} · {part('other cells', 'other_cells')} · {part('idle', 'idle')}")


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


class LiveReadout:
    """An ipywidgets line under the running cell, refreshed every ``period_s`` from a timer thread."""

    def __init__(self, window, period_s: float = 1.0):
        from IPython.display import display
        import ipywidgets

        self.window = window
        self.widget = ipywidgets.HTML(value="⚡ measuring…")
        display(self.widget)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(period_s,), name="ipython-energy-readout",
                                        daemon=True)
        self._thread.start()

    def _loop(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            snap = self.window.snapshot()
            power = snap.energy_j / snap.duration_s if snap.duration_s > 0 else 0.0
            est = " (estimated)" if snap.estimated else ""
            self.widget.value = (f"⚡ {format_energy(snap.energy_j)}{est} so far · {power:.1f} W mean · "
                                 f"{snap.duration_s:.0f} s elapsed")

    def finish(self, text: str | None) -> None:
        """Stop refreshing and leave ``text`` (the summary line, or nothing) in the widget's place."""
        self._stop.set()
        self._thread.join(timeout=1.0)
        self.widget.value = html.escape(text) if text else ""
