"""Repeats and A/B runs: a group of measured repeats with its statistics, cooldowns, and the order of runs.

One measurement of energy is one draw from a distribution that heat, clocks and background load
shape; a group of repeats estimates its mean with an interval (:mod:`ipython_energy.stats`, a t
interval).  :func:`repeat` runs one callable K times as warm-ups (measured and logged, left out
of the statistics) and N times as repeats; :func:`compare_callables` runs two callables' warm-ups
and repeats in an order that balances drift between them (interleaved by default) and compares
the two groups (:mod:`ipython_energy.comparison`).  Before each run, an optional cooldown waits
a fixed time or, ``auto``, until every GPU is back near the session's idle temperature (without
a GPU temperature: until the power is back near the idle baseline), at most ``cooldown_max_s``.

Every run is an ordinary run (of the active sweep, if any) with the group's tags
(docs/metrics.md, "Groups of repeats"); the group's parent run carries the statistics.
"""

from __future__ import annotations

import html
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

from . import stats
from .layout import key_part
from .measurement import Measurement, format_energy
from .validate import check_name, check_units, parse_duration, quote, status_for

if TYPE_CHECKING:
    from .runs import Run, Sweep
    from .tracking import Tracker

#: The orders :func:`compare_callables` knows; a single group's runs are ``sequential``.
ORDERS = ("interleaved", "shuffled", "blocked")
#: ``cooldown auto`` without GPU temperatures: power counts as back at idle within this fraction of the
#: idle baseline, or :data:`POWER_MARGIN_W`, whichever is larger (a baseline of a few watts is noisy).
POWER_MARGIN = 0.05
POWER_MARGIN_W = 1.0
#: How often ``cooldown auto`` looks at the temperatures (the sensors refresh them every 2 s).
POLL_S = 0.5


# ---- cooldowns ----------------------------------------------------------------------------------
class Cooldown(NamedTuple):
    """What to wait for before each run: ``none``, ``fixed`` (``seconds``) or ``auto``."""

    mode: str
    seconds: float = 0.0

    def __str__(self) -> str:
        return f"{self.seconds:g} s" if self.mode == "fixed" else self.mode


NO_COOLDOWN = Cooldown("none")


def parse_cooldown(value: Any) -> Cooldown:
    """``None``/``"none"``/0, a duration (``30``, ``"30s"``, ``"2min"``) or ``"auto"``.

    TypeError for a value of another type, ValueError for text that is none of these.
    """
    if value is None or value is False:
        return NO_COOLDOWN
    if isinstance(value, str) and value.strip().lower() in ("auto", "none", "off"):
        word = value.strip().lower()
        return Cooldown("auto") if word == "auto" else NO_COOLDOWN
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"cooldown must be 'auto', a duration such as '30s', or a number of seconds, not {quote(value)}")
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"cooldown: {exc}; or 'auto'") from None
    return Cooldown("fixed", seconds) if seconds > 0 else NO_COOLDOWN


class Waited(NamedTuple):
    """How long a cooldown waited (seconds, on the meter's clock) and why it stopped, in words."""

    seconds: float
    text: str


def cool_down(tracker: "Tracker", cooldown: Cooldown, sleep: Callable[[float], None] = time.sleep) -> Waited:
    """Wait as ``cooldown`` says; ``sleep`` lets the time pass (a simulation passes its clock's)."""
    if cooldown.mode == "none":
        return Waited(0.0, "none")
    clock = tracker.meter.clock
    start = clock()
    if cooldown.mode == "fixed":
        sleep(cooldown.seconds)
        return Waited(clock() - start, f"fixed {cooldown.seconds:g} s")
    return _auto(tracker, sleep, clock, start)


def _auto(tracker: "Tracker", sleep, clock, start: float) -> Waited:
    """Poll until the GPUs (else the power) are back near idle, at most ``cooldown_max_s``."""
    meter = tracker.meter
    limit = tracker.config.cooldown_max_s
    idle_c = meter.sampler.coolest_temperatures()
    gpus = [d.name for d in meter.domains if d.kind == "gpu" and d.name in idle_c]
    if gpus:
        margin_c = tracker.config.cooldown_margin_c

        def check() -> tuple[bool, str]:
            return _temperatures_back(meter, gpus, margin_c)
    else:
        baseline = meter.idle_power_w
        if baseline is None:
            return Waited(0.0, "auto: no GPU temperature and no idle power baseline yet; no wait")
        margin_w = max(POWER_MARGIN * baseline, POWER_MARGIN_W)

        def check() -> tuple[bool, str]:
            power = sum(meter.power_now().values())
            sign = "≤" if power <= baseline + margin_w else ">"
            return sign == "≤", f"power {power:.1f} W {sign} {baseline:.1f}+{margin_w:.1f} W"
    while True:
        done, state = check()
        waited = clock() - start
        if done:
            return Waited(waited, f"auto: {state} after {waited:.1f} s")
        if waited >= limit:
            return Waited(waited, f"auto: timed out after {limit:g} s ({state})")
        sleep(max(min(POLL_S, limit - waited), 0.001))


def _temperatures_back(meter, gpus: list[str], margin_c: float) -> tuple[bool, str]:
    """Whether every GPU is within ``margin_c`` of the coolest it has been this session, and the figures."""
    states, idle = meter.sampler.states(), meter.sampler.coolest_temperatures()
    parts, done = [], True
    for gpu in gpus:
        try:
            now = float(states[gpu]["temperature_c"])
        except (KeyError, ValueError):
            parts.append(f"{gpu} temperature unknown")
            done = False
            continue
        back = now <= idle[gpu] + margin_c
        done = done and back
        parts.append(f"{gpu} {now:g} °C {'≤' if back else '>'} {idle[gpu]:g}+{margin_c:g} °C")
    return done, ", ".join(parts)


# ---- a group ------------------------------------------------------------------------------------
@dataclass
class Group:
    """One callable's (or cell's) repeats: their measurements and statistics.

    ``measurements``: the finished repeats', in order (warm-ups in ``warmup_measurements``); the
    statistics (:attr:`summary`, ``mean``, ``sd``, ``cv``, ``ci95``) are over them.  ``uid`` is the
    group parent run's ``energy.uid`` (None when not logged).
    """

    name: str
    n: int
    warmups: int
    order: str
    cooldown: Cooldown
    uid: str | None = None
    comparison_id: str | None = None
    measurements: list[Measurement] = field(default_factory=list)
    warmup_measurements: list[Measurement] = field(default_factory=list)
    members: list["Run"] = field(default_factory=list)  # every run, warm-ups included, in order
    units: list[dict[str, float]] = field(default_factory=list)  # each finished repeat's units
    waits: list[Waited] = field(default_factory=list)
    status: str = "RUNNING"

    @property
    def summary(self) -> stats.Summary | None:
        """Mean, sd, cv and 95 % CI of the repeats' energy (None before the first repeat ends)."""
        return stats.summarize(m.energy_j for m in self.measurements) if self.measurements else None

    @property
    def mean(self) -> float | None:
        return None if self.summary is None else self.summary.mean

    @property
    def sd(self) -> float | None:
        return None if self.summary is None else self.summary.sd

    @property
    def cv(self) -> float | None:
        return None if self.summary is None else self.summary.cv

    @property
    def ci95(self) -> tuple[float, float] | None:
        return None if self.summary is None else self.summary.ci95

    @property
    def unit(self) -> str | None:
        """The unit every repeat declares, when they all declare the same one (and only it)."""
        kinds = {tuple(u) for u in self.units}
        if len(kinds) == 1 and len(next(iter(kinds))) == 1 and len(self.units) == len(self.measurements):
            return next(iter(kinds))[0]
        return None

    def per_unit(self) -> stats.Summary | None:
        """The statistics of energy per :attr:`unit` (None without a common unit)."""
        unit = self.unit
        if unit is None or not self.measurements:
            return None
        return stats.summarize(m.energy_j / u[unit] for m, u in zip(self.measurements, self.units))

    def metrics(self) -> dict[str, float]:
        """The group parent run's metrics (docs/metrics.md)."""
        s = self.summary
        if s is None:
            return {"group_n": 0.0}
        out = _stat_metrics(s, "")
        per = self.per_unit()
        if per is not None:
            out.update(_stat_metrics(per, f"_per_{key_part(self.unit)}"))
            del out[f"group_n_per_{key_part(self.unit)}"]
        return out

    def __str__(self) -> str:
        s = self.summary
        head = f"group {self.name}: "
        if s is None:
            text = head + f"no repeat finished (of {self.n})"
        else:
            text = head + f"{s.n} repeat{'s' if s.n != 1 else ''}, {format_energy(s.mean)}"
            if s.sd is not None:
                text += f" ± {format_energy(s.sd)} (95 % CI {format_energy(s.ci95[0])}–{format_energy(s.ci95[1])})"
                if s.cv is not None:
                    text += f", cv {s.cv * 100:.1f} %"
            else:
                text += " (one repeat: no interval)"
            per = self.per_unit()
            if per is not None:
                text += f", {format_energy(per.mean)}/{self.unit}"
        if self.warmups:
            text += f", {self.warmups} warm-up{'s' if self.warmups != 1 else ''}"
        if self.cooldown.mode != "none":
            text += f", cooldown {self.cooldown}"
        if self.status not in ("FINISHED", "RUNNING"):
            text += f" ({self.status.lower()})"
        return text

    def _repr_html_(self) -> str:
        return f"<div>{html.escape(str(self))}</div>"


def _stat_metrics(s: stats.Summary, suffix: str) -> dict[str, float]:
    out = {f"group_n{suffix}": float(s.n), f"group_mean{suffix}_j": s.mean}
    if s.sd is not None:
        out[f"group_sd{suffix}_j"] = s.sd
        out[f"group_ci95_low{suffix}_j"], out[f"group_ci95_high{suffix}_j"] = s.ci95
        if s.cv is not None:
            out[f"group_cv{suffix}"] = s.cv
    return out


# ---- the plan of runs ------------------------------------------------------------------------------
class Slot(NamedTuple):
    """One run of the executed order: which group, a warm-up or not, and its number within its kind."""

    group: str
    warmup: bool
    number: int


def plan(labels: list[str], n: int, warmups: int, order: str, seed: int | None = None) -> list[Slot]:
    """The executed order of every run (warm-ups first within each block).

    ``interleaved``: round by round, each group once per round in the given order (a b a b …);
    ``shuffled``: round by round, each group once per round in a random order drawn from ``seed``
    (balanced like interleaved, but no group always goes first); ``blocked``: each group's
    warm-ups and repeats together, group after group (a a … b b …: drift is not balanced).
    """
    if order == "blocked":
        return [Slot(g, warm, k) for g in labels
                for warm, count in ((True, warmups), (False, n)) for k in range(1, count + 1)]
    rng = random.Random(seed)
    out: list[Slot] = []
    for warm, count in ((True, warmups), (False, n)):
        for k in range(1, count + 1):
            round_ = list(labels)
            if order == "shuffled":
                rng.shuffle(round_)
            out.extend(Slot(g, warm, k) for g in round_)
    return out


def check_count(value: Any, what: str, least: int) -> int:
    """A whole number ``>= least`` (TypeError for another type, ValueError below it)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be a whole number, not {quote(value)}")
    if value < least or value > 100_000:
        raise ValueError(f"{what} must be between {least} and 100000, not {value}")
    return value


# ---- running ----------------------------------------------------------------------------------------
def run_groups(tracker: "Tracker", fns: Mapping[str, Callable[[], Any]], *, n: int, warmups: int, order: str,
               cooldown: Cooldown, seed: int | None = None, params: Mapping[str, Any] | None = None, units: tuple[float, str] | None = None,
               log: bool | None = None, comparison_id: str | None = None,
               sleep: Callable[[float], None] = time.sleep,
               groups: dict[str, Group] | None = None) -> tuple[dict[str, Group], Any]:
    """Run every group's warm-ups and repeats in ``order``; returns the groups (named by the keys of
    ``fns``) and the last run's result.

    ``groups``: a dict filled with the groups as they start (the caller has them when a run raises).

    An exception in a run (or a sweep's budget refusing one) ends that run and every group as
    FAILED (KILLED for KeyboardInterrupt), with the statistics of the repeats that finished, and
    propagates.
    """
    slots = plan(list(fns), n, warmups, order, seed)
    sweep = tracker.sweep
    groups = {} if groups is None else groups
    for label in fns:
        group = Group(label, n, warmups, order, cooldown, comparison_id=comparison_id)
        tags = {"energy.group": group.name, "energy.repeats": str(n), "energy.warmups": str(warmups),
                "energy.order": order, "energy.cooldown": str(cooldown)}
        if comparison_id:
            tags["energy.comparison_id"] = comparison_id
        group.uid = tracker.start_group(group.name, sweep=sweep, tags=tags, log=log)
        groups[label] = group
    status, result = "FINISHED", None
    try:
        for position, slot in enumerate(slots, start=1):
            result = _run_slot(tracker, groups[slot.group], slot, position, fns[slot.group], sweep=sweep,
                               params=params, units=units, log=log, sleep=sleep)
    except BaseException as exc:
        status = status_for(type(exc))
        raise
    finally:
        for group in groups.values():
            group.status = status
            if group.uid is not None:
                tags = {"energy.unit": group.unit} if group.unit else {}
                tracker.end_group(group.uid, status, group.metrics(), tags)
    return groups, result


def _run_slot(tracker: "Tracker", group: Group, slot: Slot, position: int, fn: Callable[[], Any], *,
              sweep: "Sweep | None", params, units, log, sleep) -> Any:
    waited = cool_down(tracker, group.cooldown, sleep)
    group.waits.append(waited)
    tags = {"energy.group": group.name, "energy.order_position": str(position), "energy.order": group.order,
            "energy.cooldown": waited.text}
    if group.uid is not None:
        tags["energy.group_uid"] = group.uid
    if slot.warmup:
        tags["energy.warmup"] = "true"
        name = f"{group.name} warm-up {slot.number}"
    else:
        tags["energy.repeat"] = str(slot.number)
        name = f"{group.name} #{slot.number}"
    if group.comparison_id:
        tags["energy.comparison_id"] = group.comparison_id
    run = tracker.start_run(name, params, sweep=sweep, log=log, tags=tags, group_uid=group.uid)
    group.members.append(run)
    tracker.log_metrics(run, {"cooldown_s": waited.seconds})
    status = "FINISHED"
    try:
        return fn()
    except BaseException as exc:
        status = status_for(type(exc))
        raise
    finally:
        if units is not None:
            run.add_units(*units)
        m = tracker.end_run(run, status)
        if slot.warmup:
            group.warmup_measurements.append(m)
        elif status == "FINISHED":
            group.measurements.append(m)
            group.units.append(dict(run.units))


def repeat(fn: Callable[[], Any], n: int = 5, *, warmup: int = 0, cooldown: Any = None, name: str | None = None,
           params: Mapping[str, Any] | None = None, units: tuple[float, str] | None = None,
           tracker: "Tracker | None" = None, sleep: Callable[[float], None] = time.sleep) -> Group:
    """Run ``fn()`` ``warmup`` times then ``n`` times, each its own run, as one group; returns the :class:`Group`."""
    if not callable(fn):
        raise TypeError(f"repeat needs a callable, not {quote(fn)}")
    n, warmup = check_count(n, "n", 1), check_count(warmup, "warmup", 0)
    cooldown = parse_cooldown(cooldown)
    name = check_name(name if name is not None else getattr(fn, "__name__", "repeat"), "group")
    if units is not None:
        units = check_units(*units)
    tracker = tracker or _tracker()
    groups, _ = run_groups(tracker, {name: fn}, n=n, warmups=warmup, order="sequential", cooldown=cooldown,
                           params=params, units=units, sleep=sleep)
    return groups[name]


def compare_callables(fns: Mapping[str, Callable[[], Any]], repeats: int = 5, *, order: str = "interleaved",
                      warmup: int = 0, cooldown: Any = None, seed: int | None = None,
                      params: Mapping[str, Any] | None = None, flush_timeout_s: float = 60.0,
                      tracker: "Tracker | None" = None, sleep: Callable[[float], None] = time.sleep):
    """Run two callables' repeats in ``order`` and compare them (b over a, in the mapping's order).

    Returns a :class:`~ipython_energy.comparison.Comparison`, read back from MLflow (so it needs
    logging on); its ``groups`` attribute holds the two :class:`Group` objects.
    """
    from .comparison import compare
    from .runs import EnergyError

    if not isinstance(fns, Mapping) or len(fns) != 2:
        raise ValueError(f"compare_callables takes a mapping of two names to callables, such as "
                         f"{{'a': fa, 'b': fb}}, not {quote(fns)}")
    for label, fn in fns.items():
        check_name(label, "group")
        if not callable(fn):
            raise TypeError(f"{label!r} must be a callable, not {quote(fn)}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {quote(order)}")
    repeats, warmup = check_count(repeats, "repeats", 1), check_count(warmup, "warmup", 0)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be a whole number or None, not {quote(seed)}")
    cooldown = parse_cooldown(cooldown)
    tracker = tracker or _tracker()
    if not tracker.config.log:
        raise EnergyError("compare_callables reads the runs back from MLflow, and logging is off in this session")
    comparison_id = uuid.uuid4().hex[:16]
    groups, _ = run_groups(tracker, dict(fns), n=repeats, warmups=warmup, order=order, cooldown=cooldown,
                           seed=seed, params=params, comparison_id=comparison_id, sleep=sleep)
    a, b = (groups[label] for label in fns)
    if not tracker.flush(flush_timeout_s):
        raise EnergyError(f"MLflow does not have every run yet (after {flush_timeout_s:g} s); nothing is lost: "
                          f"they are in the spool. Compare later with energy.compare({a.name!r}, {b.name!r})")
    result = compare(a, b, tracking_uri=tracker.tracking_uri, experiment=tracker.config.experiment,
                     labels=tuple(fns))
    result.groups = groups
    return result


def _tracker() -> "Tracker":
    from .runtime import get_tracker

    return get_tracker()
