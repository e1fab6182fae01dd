"""A sweep's ledger as MLflow holds it: run numbers claimed on the parent, totals derived from the children.

Writers on many hosts share nothing but the MLflow server, so nothing here takes a lock.  Two of
MLflow's guarantees carry the ledger (docs/reliability.md, "A sweep across machines"):

* **A param is written once.**  The store's primary key is ``(run, key)``: logging a param that
  exists with another value is refused (``INVALID_PARAMETER_VALUE``), with the same value
  accepted.  A run number is claimed by logging ``energy.index.<k>`` = the child's run id on the
  parent, for the lowest ``k`` that looks free: of two writers that try the same ``k`` one gets
  it and the other tries the next.  A retry finds its own claim, so claiming is idempotent.
* **A metric point is its key, step, timestamp and value.**  Logging the same point again adds
  nothing, and MLflow's latest value of a metric is the point with the highest (step,
  timestamp, value).  Every ``sweep_*`` point at step ``n`` is a function of the sweep's
  children alone: the first ``n`` counted children in run-number order, once every run number
  up to theirs has ended, stamped with the latest end time among them.  Any writer may compute
  and log them, any number of times: a writer with a stale view logs the same points or
  none.  The members' time after their last runs (``energy.between_after_j.<uid>`` tags,
  written as they leave) counts from the step each member saw last when it left
  (``energy.between_after_step.<uid>``), so it adds a point at that step, not at earlier ones.
  A writer that counted a later step before a member's tags reached it logs a point without
  them; the member's own recount logs the complete one, at the same step and time, and as every
  total grows with what it includes, the complete point is the largest, and MLflow's latest.

The pure part (:func:`claims_of`, :func:`settled_entry`, :func:`prefix`, :func:`points`) takes
plain values; :class:`Ledger` is one writer's view of one sweep, kept between its runs so that
a run costs no listing of the sweep's children.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple

from . import rollup

#: The parent's param prefix of a run number's claim: ``energy.index.<k>`` = the child's run id.
INDEX_PARAM = "energy.index."
#: A child whose energy another run of the sweep counts (a cell's run that a real run opened
#: inside the cell took the place of): ended with this tag before it is deleted, so that no
#: reader ever counts it.
SUPERSEDED_TAG = "energy.superseded"
#: The parent's tag prefix for a member's between-runs energy after its last run (its SweepEnd).
AFTER_TAG = "energy.between_after_j."
#: ... and for the step from which the sweep's totals include it: the last step its member saw
#: complete when it left (absent: from the first step, as written by earlier versions).
AFTER_STEP_TAG = "energy.between_after_step."


class Child(NamedTuple):
    """A finished child of a sweep as the roll-up needs it.

    ``share_j``: its part of the sweep's energy in runs (``sweep_share_energy_j``: its energy
    less what it shared with overlapping runs); ``gap_j``: the between-runs energy its end
    carried (``sweep_gap_before_energy_j``).  A run written by an earlier version has neither:
    its share is its ``energy_j`` and its gap 0, as the sum of the runs was then.
    """

    energy_j: float
    share_j: float
    gap_j: float
    shares_devices: bool

    @classmethod
    def of(cls, metrics: Mapping[str, float], tags: Mapping[str, str]) -> "Child":
        energy = float(metrics["energy_j"])
        return cls(energy, float(metrics.get("sweep_share_energy_j", energy)),
                   float(metrics.get("sweep_gap_before_energy_j", 0.0)),
                   tags.get("energy.shares_devices") == "true")


class Entry(NamedTuple):
    """A child that has ended (or was deleted): ``child`` is None when the sweep does not count it
    (deleted, superseded, or ended without an energy); ``host`` / ``session`` say where it ran."""

    child: Child | None
    end_ms: int
    host: str | None
    session: str | None


def claims_of(params: Mapping[str, str]) -> dict[int, str]:
    """The run numbers claimed on a parent: ``{k: child run id}``."""
    out = {}
    for key, value in params.items():
        if key.startswith(INDEX_PARAM):
            try:
                out[int(key[len(INDEX_PARAM):])] = value
            except ValueError:
                continue
    return out


def lowest_free(claims: Mapping[int, str], taken: Iterable[int] = ()) -> int:
    """The lowest run number that neither ``claims`` nor ``taken`` holds."""
    taken = set(taken)
    k = 1
    while k in claims or k in taken:
        k += 1
    return k


def entry(metrics: Mapping[str, float], tags: Mapping[str, str], end_ms: int | None, *,
          counted: bool = True) -> Entry:
    """The entry of an ended child from its final metrics and tags."""
    counted = counted and "energy_j" in metrics and tags.get(SUPERSEDED_TAG) != "true"
    return Entry(Child.of(metrics, tags) if counted else None, int(end_ms or 0),
                 tags.get("energy.host"), tags.get("energy.session"))


def settled_entry(run: Any) -> Entry | None:
    """The entry of an MLflow child run, or None while it runs (its numbers are not final)."""
    deleted = run.info.lifecycle_stage == "deleted"
    if not deleted and run.info.status not in rollup.ENDED_STATUSES:
        return None
    return entry(run.data.metrics, run.data.tags, run.info.end_time, counted=not deleted)


def prefix(claims: Mapping[int, str], settled: Mapping[str, Entry]) -> list[Entry]:
    """The children numbered 1, 2, … up to the first number not claimed or not ended: the part of
    the sweep whose figures can no longer change."""
    out, k = [], 1
    while k in claims and claims[k] in settled:
        out.append(settled[claims[k]])
        k += 1
    return out


class Step(NamedTuple):
    """The sweep's figures at one step (its ``n``-th counted run): the parent's ``sweep_*`` points."""

    step: int
    t_ms: int
    totals: rollup.SweepTotals
    hosts: int
    processes: int
    overlapping: int


def points(done: Iterable[Entry], after: Iterable[tuple[float, int]], planned: int | None,
           budget_j: float | None) -> list[Step]:
    """One :class:`Step` per counted child of ``done`` (a :func:`prefix`), each a function of the
    children up to it and of the members' time after their last runs (``after``: ``(joules,
    from step)``) that counts from that step."""
    after = list(after)
    counted: list[Child] = []
    hosts: set[str] = set()
    sessions: set[str] = set()
    t_ms = 0
    out = []
    for e in done:
        t_ms = max(t_ms, e.end_ms)
        if e.child is None:
            continue
        counted.append(e.child)
        hosts.add(e.host or "")
        sessions.add(e.session or e.host or "")
        rolled = rollup.totals([c.share_j for c in counted], planned, budget_j,
                               between_j=[c.gap_j for c in counted] + [j for j, k in after if k <= len(counted)])
        out.append(Step(len(counted), t_ms, rolled, len(hosts), len(sessions),
                        sum(1 for c in counted if c.shares_devices)))
    return out


def step_rows(s: Step) -> list[tuple[str, float, int, int]]:
    """The ``(key, value, step, timestamp)`` rows of one step."""
    t = s.totals
    rows = [("sweep_energy_j", t.energy_j), ("sweep_runs", t.runs), ("sweep_runs_energy_j", t.runs_energy_j),
            ("sweep_between_runs_energy_j", t.between_runs_energy_j),
            ("sweep_mean_energy_per_run_j", t.mean_energy_per_run_j),
            ("sweep_hosts", s.hosts), ("sweep_processes", s.processes)]
    if t.forecast_energy_j is not None:
        rows.append(("sweep_forecast_energy_j", t.forecast_energy_j))
    return [(key, float(value), s.step, s.t_ms) for key, value in rows if value is not None]


class Ledger:
    """One writer's view of one sweep: the claims it has seen, the children it knows have ended,
    and the points it has logged (so that it logs each once).

    ``dirty`` is set when one of its runs ended and the totals are not yet logged: the writer
    logs them once its queue is empty (:meth:`ipython_energy.store.MlflowStore.settle`), so that
    catching up after an outage costs one recount per sweep, not one per run.
    """

    __slots__ = ("claims", "settled", "after", "plan", "logged", "dirty", "written_step", "counted_after")

    def __init__(self) -> None:
        self.claims: dict[int, str] = {}
        self.settled: dict[str, Entry] = {}
        self.after: dict[str, tuple[float, int]] = {}  # member uid -> (joules after its last run, from step)
        self.plan: tuple[int | None, float | None] | None = None
        self.logged: set[tuple[str, int, int, float]] = set()
        self.dirty = False
        self.written_step = 0
        self.counted_after: set[str] = set()  # members whose after-time this writer's points include

    def read_parent(self, run: Any) -> None:
        """Take the claims, the plan and the members' after-time from the parent run."""
        self.claims.update(claims_of(run.data.params))
        tags = run.data.tags
        self.plan = (rollup.whole(tags.get("energy.planned")), rollup.number(tags.get("energy.budget_j")))
        self.after = {}
        for key, value in tags.items():
            joules = rollup.number(value) if key.startswith(AFTER_TAG) else None
            if joules is not None:
                uid = key[len(AFTER_TAG):]
                self.after[uid] = (joules, rollup.whole(tags.get(AFTER_STEP_TAG + uid)) or 0)

    def index_of(self, run_id: str) -> int | None:
        for k, claimed in self.claims.items():
            if claimed == run_id:
                return k
        return None

    def waiting(self) -> list[str]:
        """Claimed children not known to have ended, in run-number order from the first gap."""
        out, k = [], len(prefix(self.claims, self.settled)) + 1
        while k in self.claims:
            if self.claims[k] not in self.settled:
                out.append(self.claims[k])
            k += 1
        return out

    def steps(self, planned: int | None, budget_j: float | None) -> list[Step]:
        return points(prefix(self.claims, self.settled), self.after.values(), planned, budget_j)

    def complete_steps(self) -> int:
        """How many counted children the ended prefix holds: the last step this writer can log."""
        return sum(1 for e in prefix(self.claims, self.settled) if e.child is not None)

    def new_rows(self, steps: list[Step]) -> list[tuple[str, float, int, int]]:
        """The rows of ``steps`` not logged yet by this writer: every step from the last it wrote,
        or from the first a member's after-time counts from."""
        first = min([self.written_step] + [k for uid, (_j, k) in self.after.items() if uid not in self.counted_after])
        rows = []
        for s in steps:
            if s.step < first:
                continue
            rows += [r for r in step_rows(s) if (r[0], r[2], r[3], r[1]) not in self.logged]
        return rows

    def wrote(self, rows: list[tuple[str, float, int, int]]) -> None:
        self.written_step = max([self.written_step] + [step for _k, _v, step, _t in rows])
        self.counted_after |= set(self.after)
        # Earlier steps are not written again (new_rows): what is kept stays a step long.
        self.logged = {p for p in self.logged if p[1] >= self.written_step}
        self.logged |= {(k, step, t, v) for k, v, step, t in rows if step >= self.written_step}
