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

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Mapping, NamedTuple, Union

from . import layout
from .measurement import Measurement

Row = tuple  # (key: str, value: float, step: int, timestamp_ms: int)


def _rows(rows: Any) -> tuple[Row, ...]:
    return tuple((str(k), float(v), int(step), int(t)) for k, v, step, t in rows)


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
    in another, counted in that one only; absent from journals written before nesting existed)."""

    type: ClassVar[str] = "run_start"
    sweep_uid: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    parent_uid: str | None = None


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

    def energy_j(self) -> float | None:
        """The run's final ``energy_j``, if this event carries it."""
        values = [value for key, value, _step, _t in self.rows if key == "energy_j"]
        return values[-1] if values else None


@dataclass(frozen=True)
class SweepEnd(_End):
    """A sweep ends: its chart is saved, and the process that created it closes it."""

    type: ClassVar[str] = "sweep_end"


Event = Union[SweepStart, RunStart, Metrics, RunEnd, SweepEnd, SweepUpdate]
StartEvent = Union[SweepStart, RunStart]

_BY_TYPE: dict[str, type] = {cls.type: cls for cls in (SweepStart, RunStart, Metrics, RunEnd, SweepEnd,
                                                      SweepUpdate)}


def from_wire(data: Mapping[str, Any]) -> Event:
    """The event a spool line holds (KeyError/TypeError/ValueError for a line that is not one)."""
    return _BY_TYPE[data["type"]]._from_wire(data)


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

    def finish(self) -> RunEnd:
        m = self.measurement
        rows = layout.rows(layout.run_metrics(m, units=self.units, stages=self.stages), 0, self.t_ms)
        if self.cell_step is not None:
            rows += layout.rows(layout.cell_metrics(m), self.cell_step, self.t_ms)
        tags = layout.provenance_tags(m, idle_source=self.idle_source, unit=next(iter(self.units), None))
        return RunEnd(self.uid, self.status, self.t_ms, _rows(rows), tags)


class CellMetricsDraft(NamedTuple):
    """One cell's metrics for a run, at step = the cell's execution count."""

    uid: str
    measurement: Measurement
    step: int
    t_ms: int

    def finish(self) -> Metrics:
        return Metrics(self.uid, _rows(layout.rows(layout.cell_metrics(self.measurement), self.step, self.t_ms)))


Draft = Union[RunEndDraft, CellMetricsDraft]
