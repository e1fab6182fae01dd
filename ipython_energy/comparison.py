"""Comparable energy: two sets of runs, the ratio of their energy with its interval, and whether
the two numbers may be compared at all.

A side is a run, a group of repeats or a sweep (its finished runs), found in MLflow by run id or
by name.  :func:`compare` returns a :class:`Comparison`: ``ratio`` (b over a, of the mean energy
per run, or per unit of work when both sides declare the same unit), ``ratio_ci95`` (see
:mod:`ipython_energy.stats`), ``comparable`` and ``reasons``, the checks behind them, and one
plain sentence (:attr:`Comparison.verdict`).  docs/comparing.md describes the protocol and each
check.

The checks read the provenance tags every run carries (docs/metrics.md).  A *blocker* makes the
two numbers incomparable: a measured figure against an estimate, different measured domains,
different GPU or CPU models.  A *caution* is a difference that biases the comparison by an
amount we can name but not remove: another host (same-model GPUs differ by 8 % on average and
up to 22 %), driver, power limit, library versions, start temperature, run order, coverage.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

from . import stats

#: Difference in mean start temperature (°C) from which the comparison says so.
TEMPERATURE_CAUTION_C = 5.0
#: Coverage below which a side's figures are said to have gaps.
COVERAGE_CAUTION = 0.99

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class Check(NamedTuple):
    """One line of the comparability table."""

    what: str
    a: str
    b: str
    severity: str  # "same", "caution" or "blocker"
    note: str


@dataclass
class Side:
    """What one side of a comparison stands for in MLflow."""

    label: str
    kind: str  # "run", "group", "sweep"
    name: str
    run_id: str
    runs: list[Any] = field(default_factory=list)  # mlflow.entities.Run, finished, with energy_j

    def tags(self, key: str) -> list[str]:
        return [r.data.tags[key] for r in self.runs if key in r.data.tags]

    def values(self, metric: str) -> list[float]:
        return [float(r.data.metrics[metric]) for r in self.runs]


@dataclass
class Comparison:
    """The answer to "did b use less energy than a, and may the two be compared?"."""

    a: Side
    b: Side
    metric: str  # "energy_j" or "energy_per_<unit>_j"
    quantity: str  # "energy per run" or "energy per <unit>"
    summary_a: stats.Summary
    summary_b: stats.Summary
    ratio: float
    ratio_ci95: tuple[float, float] | None
    checks: list[Check]
    #: The two groups of repeats, label -> repeats.Group, when the comparison ran them (compare_callables).
    groups: dict[str, Any] = field(default_factory=dict)

    @property
    def comparable(self) -> bool:
        return not any(c.severity == "blocker" for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        """What makes the numbers incomparable (blockers) or less certain (cautions), worst first."""
        order = {"blocker": 0, "caution": 1}
        return [c.note for c in sorted(self.checks, key=lambda c: order.get(c.severity, 2))
                if c.severity != "same"]

    @property
    def difference_shown(self) -> bool:
        """Whether the interval excludes "no difference" (False without an interval)."""
        return self.ratio_ci95 is not None and not (self.ratio_ci95[0] <= 1.0 <= self.ratio_ci95[1])

    @property
    def verdict(self) -> str:
        """One plain sentence: the difference, its interval, and whether it may be trusted."""
        a, b = self.a.label, self.b.label
        change = abs(1.0 - self.ratio) * 100
        direction = "less" if self.ratio < 1 else "more"
        head = f"{b} uses {change:.0f} % {direction} {self.quantity} than {a}"
        if self.ratio_ci95 is None:
            head += " (one run on a side: no interval can be given; repeat each at least twice)"
        elif self.difference_shown:
            lo, hi = sorted(abs(1.0 - x) * 100 for x in self.ratio_ci95)
            head += f" (95 % CI {lo:.0f}–{hi:.0f} %)"
        else:
            lo, hi = self.ratio_ci95
            head = (f"no difference in {self.quantity} can be claimed between {a} and {b}: "
                    f"{b}/{a} = {self.ratio:.2f} (95 % CI {lo:.2f}–{hi:.2f})")
        same = [c.note for c in self.checks if c.severity == "same"]
        blockers = [c.note for c in self.checks if c.severity == "blocker"]
        cautions = [c.note for c in self.checks if c.severity == "caution"]
        parts = [head]
        if blockers:
            parts.append("NOT comparable: " + "; ".join(blockers))
        else:
            parts.append("comparable" + (": " + ", ".join(same) if same else ""))
        if cautions:
            parts.append("caution: " + "; ".join(cautions))
        return "; ".join(parts)

    def table(self) -> list[tuple[str, str, str, str]]:
        """The checks as rows: (what, a, b, verdict)."""
        return [(c.what, c.a, c.b, c.severity if c.severity != "same" else "same") for c in self.checks]

    def __str__(self) -> str:
        sa, sb = self.summary_a, self.summary_b
        lines = [self.verdict, "",
                 f"  {self.a.label}: {self.a.kind} {self.a.name!r}, {_describe(sa)}",
                 f"  {self.b.label}: {self.b.kind} {self.b.name!r}, {_describe(sb)}", ""]
        width = max((len(c.what) for c in self.checks), default=0)
        for c in self.checks:
            lines.append(f"  {c.what:<{width}}  {c.severity:<7}  {c.note}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = "".join(
            f"<tr><td>{esc(c.what)}</td><td>{esc(c.a)}</td><td>{esc(c.b)}</td>"
            f"<td style='color:{_COLOURS[c.severity]}'>{esc(c.severity)}</td></tr>" for c in self.checks)
        return (f"<div><p><b>{esc(self.verdict)}</b></p>"
                f"<p>{esc(self.a.label)}: {esc(_describe(self.summary_a))}<br>"
                f"{esc(self.b.label)}: {esc(_describe(self.summary_b))}</p>"
                f"<table><tr><th>check</th><th>{esc(self.a.label)}</th><th>{esc(self.b.label)}</th>"
                f"<th></th></tr>{rows}</table></div>")

    def log(self, tracking_uri: str | None = None, experiment: str | None = None) -> str:
        """Record the comparison in MLflow as a run of kind ``comparison``; returns its run id."""
        from .transport import mlflow_client_class

        uri, experiment = _where(tracking_uri, experiment)
        client = mlflow_client_class()(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        tags = {"energy.kind": "comparison", "energy.compare.a": self.a.run_id, "energy.compare.b": self.b.run_id,
                "energy.compare.metric": self.metric, "energy.comparable": str(self.comparable).lower(),
                "energy.verdict": self.verdict[:5000], "energy.reasons": "; ".join(self.reasons)[:5000]}
        run = client.create_run(exp_id, tags=tags, run_name=f"{self.b.name} vs {self.a.name}"[:250])
        metrics = {"ratio": self.ratio, "mean_a": self.summary_a.mean, "mean_b": self.summary_b.mean}
        if self.ratio_ci95 is not None:
            metrics.update(ratio_ci95_low=self.ratio_ci95[0], ratio_ci95_high=self.ratio_ci95[1])
        from mlflow.entities import Metric

        client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()])
        client.set_terminated(run.info.run_id)
        return run.info.run_id


_COLOURS = {"same": "inherit", "caution": "#b26a00", "blocker": "#c62828"}


def _describe(s: stats.Summary) -> str:
    from .measurement import format_energy

    text = f"{s.n} run{'s' if s.n != 1 else ''}, mean {format_energy(s.mean)}"
    if s.sd is not None:
        text += f" ± {format_energy(s.sd)} (sd; cv {s.cv * 100:.1f} %), 95 % CI {format_energy(s.ci95[0])}–{format_energy(s.ci95[1])}"
    return text


# ---- building a comparison ---------------------------------------------------------------------
def compare(a: Any, b: Any, *, tracking_uri: str | None = None, experiment: str | None = None,
            labels: tuple[str, str] | None = None) -> Comparison:
    """Compare ``a`` and ``b``: MLflow run ids, or names of groups, sweeps or runs (in that order
    of preference), or the handles the Python API returns (``energy.run``, ``energy.sweep``).

    The verdict calls the sides by ``labels``; by default by their names (``a`` and ``b`` when the
    names are the same or long).
    """
    from .transport import mlflow_client_class

    uri, experiment = _where(tracking_uri, experiment)
    client = mlflow_client_class()(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment {experiment!r} at {uri}")
    sides = [resolve(client, exp.experiment_id, ref, label) for ref, label in zip((a, b), ("a", "b"))]
    if labels is None:
        names = [side.name for side in sides]
        labels = tuple(names) if names[0] != names[1] and all(len(n) <= 40 for n in names) else ("a", "b")
    for side, label in zip(sides, labels):
        side.label = label
    return compare_sides(*sides)


def compare_sides(a: Side, b: Side) -> Comparison:
    for side in (a, b):
        if not side.runs:
            raise LookupError(f"{side.label} ({side.kind} {side.name!r}) has no finished run with energy_j")
    metric, quantity = _common_metric(a, b)
    sa, sb = stats.summarize(a.values(metric)), stats.summarize(b.values(metric))
    r = stats.ratio(a.values(metric), b.values(metric))
    return Comparison(a, b, metric, quantity, sa, sb, r.ratio, r.ci95, checks(a, b))


def _common_metric(a: Side, b: Side) -> tuple[str, str]:
    """Energy per unit when every run of both sides declares the same unit, else energy per run."""
    def units(side: Side) -> set[str]:
        per = [{k for k in r.data.metrics if k.startswith("energy_per_") and k.endswith("_j")} for r in side.runs]
        return set.intersection(*per) if per else set()

    common = sorted(units(a) & units(b))
    if common:
        metric = common[0]
        return metric, f"energy per {metric[len('energy_per_'):-2]}"
    return "energy_j", "energy per run"


def resolve(client, experiment_id: str, ref: Any, label: str) -> Side:
    """The side ``ref`` names: a run id, a group, sweep or run name, or an API handle."""
    uid = getattr(ref, "uid", None)
    if uid is not None:  # a handle from energy.run() / energy.sweep()
        kind = "sweep" if hasattr(ref, "runs") else "run"
        found = _search(client, experiment_id, f"tags.`energy.uid` = '{_quote(uid)}'")
        if not found and kind == "sweep":
            found = _search(client, experiment_id, f"tags.`energy.kind` = 'sweep' and tags.`energy.sweep` = '{_quote(ref.name)}'")
        if not found:
            raise LookupError(f"{label}: {kind} {ref.name!r} is not in MLflow yet (energy.flush() first?)")
        return _side(client, experiment_id, found[0], label)
    if not isinstance(ref, str) or not ref:
        raise TypeError(f"{label}: expected a run id, a name, or a run/sweep handle, not {ref!r}"[:120])
    if _RUN_ID.match(ref):
        from mlflow.exceptions import MlflowException

        try:
            return _side(client, experiment_id, client.get_run(ref), label)
        except MlflowException:
            pass
    q = _quote(ref)
    for filter_string in (f"tags.`energy.kind` = 'group' and tags.`energy.group` = '{q}'",
                          f"tags.`energy.kind` = 'sweep' and tags.`energy.sweep` = '{q}'",
                          f"tags.`energy.kind` = 'run' and attributes.run_name = '{q}'"):
        found = _search(client, experiment_id, filter_string)
        if found:
            return _side(client, experiment_id, found[0], label)
    shown = ref if len(ref) <= 80 else ref[:77] + "…"
    raise LookupError(f"{label}: no run, group or sweep named {shown!r} in this experiment")


def _side(client, experiment_id: str, run, label: str) -> Side:
    tags = run.data.tags
    kind = tags.get("energy.kind", "run")
    name = tags.get("energy.group") or tags.get("energy.sweep") if kind in ("group", "sweep") else run.info.run_name
    if kind in ("group", "sweep"):
        # A group's repeats are found by the group's uid: inside a sweep they are the sweep's children.
        members = (f"tags.`energy.group_uid` = '{_quote(tags.get('energy.uid', ''))}'" if kind == "group"
                   else f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
        children = _search(client, experiment_id, members, limit=5000)
        runs = [r for r in children if r.info.status == "FINISHED" and "energy_j" in r.data.metrics
                and r.data.tags.get("energy.warmup") != "true"]
        runs.sort(key=lambda r: r.info.start_time or 0)
    else:
        runs = [run] if "energy_j" in run.data.metrics else []
    return Side(label, kind, name or run.info.run_id, run.info.run_id, runs)


def _search(client, experiment_id: str, filter_string: str, limit: int = 1) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=min(limit, 1000),
                                  order_by=["attributes.start_time DESC"], page_token=token)
        out.extend(page)
        token = page.token
        if not token or len(out) >= limit:
            return out[:limit]


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _where(tracking_uri: str | None, experiment: str | None) -> tuple[str, str]:
    from .runtime import current

    tracker = current()
    if tracker is not None:
        return tracking_uri or tracker.tracking_uri, experiment or tracker.config.experiment
    import os

    from .config import from_env

    config, _ = from_env()
    return tracking_uri or config.resolved_tracking_uri(os.getcwd()), experiment or config.experiment


# ---- the checks --------------------------------------------------------------------------------
def _methods(side: Side) -> dict[str, set[str]]:
    """Domain -> the methods its figures came from over the side's runs."""
    out: dict[str, set[str]] = {}
    for text in side.tags("energy.methods"):
        for part in text.split(","):
            domain, _, method = part.partition("=")
            if domain:
                out.setdefault(domain, set()).add(method)
    return out


def _one(values: Iterable[str]) -> str:
    found = sorted(set(values))
    return " / ".join(found) if found else "unknown"


def _temperatures(side: Side) -> list[float]:
    out = []
    for text in side.tags("energy.start_temperature_c"):
        for part in text.split(","):
            try:
                out.append(float(part.partition("=")[2]))
            except ValueError:
                continue
    return out


def _versions(side: Side) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for text in side.tags("energy.versions"):
        for part in text.split(","):
            name, _, version = part.partition("=")
            if name and name != "ipython_energy":
                out.setdefault(name, set()).add(version)
    return out


def checks(a: Side, b: Side) -> list[Check]:
    """Every difference between the two sides that bears on comparing their energy."""
    out: list[Check] = []
    ma, mb = _methods(a), _methods(b)
    fmt = lambda m: ", ".join(f"{d} {'/'.join(sorted(v))}" for d, v in sorted(m.items())) or "unknown"  # noqa: E731
    if set(ma) != set(mb):
        out.append(Check("measured domains", ", ".join(sorted(ma)), ", ".join(sorted(mb)), "blocker",
                         f"they measure different parts of the machine ({a.label}: {', '.join(sorted(ma)) or '?'}; "
                         f"{b.label}: {', '.join(sorted(mb)) or '?'})"))
    est_a = sorted(d for d, v in ma.items() if "estimated" in v)
    est_b = sorted(d for d, v in mb.items() if "estimated" in v)
    if bool(est_a) != bool(est_b) or (est_a and est_b and est_a != est_b):
        out.append(Check("method", fmt(ma), fmt(mb), "blocker",
                         f"a measured figure against an estimate ({a.label} estimates {', '.join(est_a) or 'nothing'}; "
                         f"{b.label} estimates {', '.join(est_b) or 'nothing'})"))
    elif ma == mb and ma:
        estimated = all("estimated" in v for v in ma.values())
        out.append(Check("method", fmt(ma), fmt(mb), "caution" if estimated else "same",
                         "both are estimates (a model, not a measurement)" if estimated else "same method"))
    elif ma and mb:
        out.append(Check("method", fmt(ma), fmt(mb), "caution",
                         "different measuring methods (counter vs polled power differ by a few %)"))

    for what, tag, severity, note in (
        ("GPU model", "energy.gpu_model", "blocker", "different GPU models"),
        ("CPU model", "energy.cpu_model", None, "different CPU models"),
        ("driver", "energy.gpu_driver", "caution", "different GPU drivers"),
        ("power limit", "energy.gpu_power_limit_w", "caution", "different GPU power limits (they cap the energy)"),
        ("host", "energy.host", "caution",
         "different hosts: GPUs of one model differ by 8 % on average and up to 22 %"),
    ):
        va, vb = set(a.tags(tag)), set(b.tags(tag))
        if not va or not vb:  # not measured on one side: the domains check says so
            continue
        if va == vb:
            out.append(Check(what, _one(va), _one(vb), "same", f"same {what}" if len(va) == 1 else f"same mix of {what}s"))
            continue
        if severity is None:  # the CPU model matters when a CPU domain was measured
            cpu = any(d.startswith(("cpu", "package", "dram")) for d in set(ma) | set(mb))
            severity = "blocker" if cpu else "caution"
        out.append(Check(what, _one(va), _one(vb), severity, note))

    va, vb = _versions(a), _versions(b)
    changed = sorted(n for n in set(va) & set(vb) if va[n] != vb[n])
    if changed:
        out.append(Check("libraries", "; ".join(f"{n} {_one(va[n])}" for n in changed),
                         "; ".join(f"{n} {_one(vb[n])}" for n in changed), "caution",
                         f"different versions of {', '.join(changed)}"))
    elif va or vb:
        out.append(Check("libraries", "same", "same", "same", "same library versions"))

    ta, tb = _temperatures(a), _temperatures(b)
    if ta and tb:
        da, db = math.fsum(ta) / len(ta), math.fsum(tb) / len(tb)
        diff = db - da
        severity = "caution" if abs(diff) >= TEMPERATURE_CAUTION_C else "same"
        note = (f"{b.label} started {abs(diff):.0f} °C {'cooler' if diff < 0 else 'warmer'}" if severity == "caution"
                else f"start temperatures within {TEMPERATURE_CAUTION_C:g} °C")
        out.append(Check("start temperature", f"{da:.0f} °C", f"{db:.0f} °C", severity, note))

    out.append(_order_check(a, b))

    worst = {s.label: min((float(x) for x in s.tags("energy.coverage")), default=1.0) for s in (a, b)}
    gaps = {s.label: sum(1 for g in s.tags("energy.gaps") if g) for s in (a, b)}
    short = {s.label: sum(1 for x in s.tags("energy.short_window") if x == "true") for s in (a, b)}
    problems = [f"{label}: lowest coverage {worst[label] * 100:.0f} %" for label in worst if worst[label] < COVERAGE_CAUTION]
    problems += [f"{label}: {n} run(s) with sensor gaps" for label, n in gaps.items() if n]
    problems += [f"{label}: {n} run(s) shorter than the sensor's update period" for label, n in short.items() if n]
    out.append(Check("coverage", f"{worst[a.label] * 100:.0f} %", f"{worst[b.label] * 100:.0f} %",
                     "caution" if problems else "same", "; ".join(problems) or "full coverage, no gaps"))
    return out


def _order_check(a: Side, b: Side) -> Check:
    """Interleaved repeats balance drift (heat, clocks, background load); blocks do not."""
    orders = set(a.tags("energy.order")) | set(b.tags("energy.order"))
    together = set(a.tags("energy.comparison_id")) & set(b.tags("energy.comparison_id"))
    if together and orders <= {"interleaved", "shuffled"}:
        order = _one(orders)
        return Check("run order", order, order, "same", f"{order} order")
    starts_a = [r.info.start_time or 0 for r in a.runs]
    starts_b = [r.info.start_time or 0 for r in b.runs]
    if max(starts_a) < min(starts_b) or max(starts_b) < min(starts_a):
        first = a.label if max(starts_a) < min(starts_b) else b.label
        return Check("run order", "blocked", "blocked", "caution",
                     f"blocked order: every run of {first} came first, so drift over time is not balanced")
    return Check("run order", "mixed", "mixed", "same", "runs of both sides alternate in time")
