"""What the tracker tells the writer: typed, frozen event records, and their wire form for the spool.

Six events make up everything that reaches MLflow: :class:`SweepStart`, :class:`RunStart`,
:class:`Metrics`, :class:`RunEnd`, :class:`SweepEnd`, and :class:`SweepUpdate` (a sweep's plan changed).  Each is keyed by the ``uid`` the
tracker gave its run or sweep (stored in MLflow as the tag ``energy.uid``), so that any
process can apply it again and find the run it belongs to.

Metric rows are ``(key, value, step, timestamp_ms)``, as MLflow stores them.

Two drafts (named tuples: cheap to make and to define), :class:`RunEndDraft` and
:class:`CellMetricsDraft`, carry a finished
:class:`~ipython_energy.measurement.Measurement` instead of rows: deriving the rows costs tens
of microseconds, so the tracker hands over the draft and the writer's journal thread calls
:meth:`finish` before the event is journalled.  Drafts never reach the spool.

The wire form (``to_wire`` / :func:`from_wire`) is one JSON object per event with a ``type``
field; it is the spool's line format, so it stays readable by later versions.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, Mapping, NamedTuple, Union

from . import layout
from .measurement import Measurement

Row = tuple  # (key: str, value: float, step: int, timestamp_ms: int)


def _rows(rows: Any) -> tuple[Row, ...]:
    return tuple((str(k), float(v), int(step), int(t)) for k, v, step, t in rows)


def rows_of(metrics: Mapping[str, float], t_ms: int, step: int = 0) -> tuple[Row, ...]:
    """Metric rows of ``metrics`` (name -> value) at one step and time."""
    return _rows(layout.rows(metrics, step, t_ms))


class _Event:
    """What every event offers; each event is a frozen dataclass below."""

    type: ClassVar[str]

    def to_wire(self) -> dict[str, Any]:
        """The JSON object the spool journals (rows as lists)."""
        out: dict[str, Any] = {"type": self.type}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "rows":
                out["metrics"] = [list(r) for r in value]
            elif isinstance(value, Mapping):
                out[f.name] = dict(value)
            else:
                out[f.name] = value
        return out

    @classmethod
    def _from_wire(cls, data: Mapping[str, Any]) -> "_Event":
        kwargs = {}
        for f in fields(cls):
            key = "metrics" if f.name == "rows" else f.name
            if key in data:
                kwargs[f.name] = _rows(data[key]) if f.name == "rows" else data[key]
        return cls(**kwargs)


@dataclass(frozen=True)
class _Start(_Event):
    """Where a run or sweep lives: its uid, name and start, and its tracking URI and experiment."""

    uid: str
    name: str
    t_ms: int
    tracking_uri: str
    experiment: str


@dataclass(frozen=True)
class SweepStart(_Start):
    """A sweep (an MLflow parent run) starts, or this process joins one of the same name."""

    type: ClassVar[str] = "sweep_start"
    session: str | None = None
    planned: int | None = None
    budget_j: float | None = None


@dataclass(frozen=True)
class RunStart(_Start):
    """A run starts: a child of ``sweep_uid`` when that is set, or of the run ``parent_uid`` (a run nested
    in another, counted in that one only; absent from journals written before nesting existed).

    ``kind``: ``run``, or ``group`` for the parent run of a group of repeats (ipython_energy/repeats.py),
    which is never counted as a run of a sweep, even when ``parent_uid`` is the sweep's.
    """

    type: ClassVar[str] = "run_start"
    sweep_uid: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    parent_uid: str | None = None
    kind: str = "run"


@dataclass(frozen=True)
class SweepUpdate(_Event):
    """A running sweep's plan changed (``%energy sweep s --planned 6`` after ``--planned 3``): its
    ``planned`` and ``budget_j`` as they are now (None: not set).  Applying it twice is harmless."""

    type: ClassVar[str] = "sweep_update"
    uid: str
    t_ms: int
    planned: int | None = None
    budget_j: float | None = None


@dataclass(frozen=True)
class Metrics(_Event):
    """Metric points for a running run (per-cell metrics, live energy)."""

    type: ClassVar[str] = "metrics"
    uid: str
    rows: tuple[Row, ...] = ()


@dataclass(frozen=True)
class _End(_Event):
    uid: str
    status: str  # FINISHED, FAILED or KILLED
    t_ms: int


@dataclass(frozen=True)
class RunEnd(_End):
    """A run ends with its final metrics and provenance tags; ``delete`` removes a superseded run."""

    type: ClassVar[str] = "run_end"
    rows: tuple[Row, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    delete: bool = False
    #: Params known only at the end (``Run.annotate``: the hyperparameters a sweep engine picked).
    params: Mapping[str, str] = field(default_factory=dict)

    def energy_j(self) -> float | None:
        """The run's final ``energy_j``, if this event carries it."""
        values = [value for key, value, _step, _t in self.rows if key == "energy_j"]
        return values[-1] if values else None


@dataclass(frozen=True)
class SweepEnd(_End):
    """This process leaves a sweep: its chart is saved, and the last member closes it.

    ``between_j``: the energy of this process's time in the sweep after its last run (the part
    of the sweep between runs that no run's end carried).
    """

    type: ClassVar[str] = "sweep_end"
    between_j: float | None = None


Event = Union[SweepStart, RunStart, Metrics, RunEnd, SweepEnd, SweepUpdate]
StartEvent = Union[SweepStart, RunStart]

_BY_TYPE: dict[str, type] = {cls.type: cls for cls in (SweepStart, RunStart, Metrics, RunEnd, SweepEnd,
                                                      SweepUpdate)}


class InvalidEvent(ValueError):
    """A journal line that is no event: unknown type, a missing or ill-typed field, a non-numeric metric value."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_map(value: Any) -> bool:
    """Params and tags: names to strings (numbers pass too: MLflow stores them as strings)."""
    return isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, (str, int, float))
                                              for k, v in value.items())


#: The check of each field annotation the events use.  A field whose annotation is not here (one a
#: later version adds) is taken as it is.
_CHECKS: dict[str, tuple[Any, str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (_whole, "a whole number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "int | None": (lambda v: v is None or _whole(v), "a whole number or null"),
    "float | None": (lambda v: v is None or _number(v), "a number or null"),
    "Mapping[str, str]": (_str_map, "an object of names to strings"),
}


def _check_rows(rows: Any) -> tuple[Row, ...]:
    if not isinstance(rows, (list, tuple)):
        raise InvalidEvent(f"'metrics' must be a list of [key, value, step, timestamp_ms], not {rows!r:.80}")
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != 4:
            raise InvalidEvent(f"metrics[{i}] must be [key, value, step, timestamp_ms], not {row!r:.80}")
        key, value, step, t = row
        if not isinstance(key, str) or not key:
            raise InvalidEvent(f"metrics[{i}]: the key must be a name, not {key!r:.80}")
        if not _number(value):
            raise InvalidEvent(f"metrics[{i}] {key!r}: the value must be a number, not {value!r:.80}")
        if not _whole(step) or not _whole(t):
            raise InvalidEvent(f"metrics[{i}] {key!r}: step and timestamp must be whole numbers, "
                               f"not {step!r:.40} and {t!r:.40}")
    return _rows(rows)


def from_wire(data: Mapping[str, Any]) -> Event:
    """The event a spool line holds; :class:`InvalidEvent` for a line that is not one.

    Each field is checked against its annotation (a string is not a number, a metric value must
    be a number); keys no event field uses are ignored (a later version may add optional ones).
    """
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"a journal line must be a JSON object, not {type(data).__name__}")
    if "type" not in data:
        raise InvalidEvent("no 'type' field")
    cls = _BY_TYPE.get(data["type"]) if isinstance(data["type"], str) else None
    if cls is None:
        raise InvalidEvent(f"unknown event type {data['type']!r:.80} (known: {', '.join(_BY_TYPE)})")
    for f in fields(cls):
        key = "metrics" if f.name == "rows" else f.name
        if key not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise InvalidEvent(f"{cls.type}: no {key!r} field")
            continue
        if f.name == "rows":
            _check_rows(data[key])
            continue
        check = _CHECKS.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        if check is not None and not check[0](data[key]):
            raise InvalidEvent(f"{cls.type}: {key!r} must be {check[1]}, not {data[key]!r:.80}")
    try:
        return cls._from_wire(data)
    except (TypeError, ValueError) as exc:  # a field a later check above does not know
        raise InvalidEvent(f"{cls.type}: {exc}") from None


# ---------------------------------------------------------------------------------------
# drafts: finished on the writer's journal thread, off the cell's path
# ---------------------------------------------------------------------------------------
class RunEndDraft(NamedTuple):
    """A run's end, with the measurement its rows and tags are derived from.

    ``cell_step``: the run was one cell's own run, and the cell's metrics go with its end at that step.
    """

    uid: str
    status: str
    t_ms: int
    measurement: Measurement
    units: Mapping[str, float]
    stages: Mapping[str, tuple[float, float]]
    idle_source: str
    cell_step: int | None = None
    #: The run's part of its sweep (runs.SweepLedger): metrics and tags for a run of a sweep.
    sweep_metrics: Mapping[str, float] = MappingProxyType({})
    sweep_tags: Mapping[str, str] = MappingProxyType({})
    #: What ``Run.annotate`` added; the run's own metrics and tags win over a name given there too.
    params: Mapping[str, str] = MappingProxyType({})
    extra_tags: Mapping[str, str] = MappingProxyType({})
    extra_metrics: Mapping[str, float] = MappingProxyType({})

    def finish(self) -> RunEnd:
        m = self.measurement
        rows = layout.rows({**self.extra_metrics, **layout.run_metrics(m, units=self.units, stages=self.stages),
                            **self.sweep_metrics}, 0, self.t_ms)
        if self.cell_step is not None:
            rows += layout.rows(layout.cell_metrics(m), self.cell_step, self.t_ms)
        tags = {**self.extra_tags,
                **layout.provenance_tags(m, idle_source=self.idle_source, unit=next(iter(self.units), None)),
                **self.sweep_tags}
        return RunEnd(self.uid, self.status, self.t_ms, _rows(rows), tags, params=dict(self.params))


class CellMetricsDraft(NamedTuple):
    """One cell's metrics for a run, at step = the cell's execution count."""

    uid: str
    measurement: Measurement
    step: int
    t_ms: int

    def finish(self) -> Metrics:
        return Metrics(self.uid, _rows(layout.rows(layout.cell_metrics(self.measurement), self.step, self.t_ms)))


Draft = Union[RunEndDraft, CellMetricsDraft]
