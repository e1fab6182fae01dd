"""What MLflow holds, read back through the MLflow client as a user would read it.

mlflow is imported on first use, so that importing the helpers costs a test nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.entities import Metric, Run
    from mlflow.tracking import MlflowClient

EXPERIMENT = "ipython-energy"  # the experiment the extension logs to unless told otherwise


def create_store(uri: str) -> None:
    """Create a sqlite store before the processes that write to it start.

    A test that reads a store while a kernel writes it would otherwise race that kernel through
    MLflow's schema migration (two processes creating one new sqlite store at once).  Other URIs
    are left alone.
    """
    if uri.startswith("sqlite:"):
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).search_experiments(max_results=1)


def runs(uri: str, experiment: str = EXPERIMENT) -> tuple[MlflowClient, list[Run]]:
    """``(client, runs)``: every run of ``experiment`` (deleted runs left out), all pages."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, []
    found, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return client, found


def runs_by_name(uri: str, experiment: str = EXPERIMENT) -> tuple[MlflowClient, dict[str, Run]]:
    """``(client, {run name: run})``; fails if two runs share a name."""
    client, found = runs(uri, experiment)
    by_name = {r.info.run_name: r for r in found}
    assert len(by_name) == len(found), sorted(r.info.run_name for r in found)
    return client, by_name


def split_sweep(found: list[Run]) -> tuple[list[Run], list[Run]]:
    """``(sweeps, children)`` by the ``energy.kind`` tag (docs/metrics.md)."""
    sweeps = [r for r in found if r.data.tags.get("energy.kind") == "sweep"]
    children = [r for r in found if r.data.tags.get("energy.kind") == "run"]
    return sweeps, children


def history(client: MlflowClient, run_id: str, key: str) -> list[Metric]:
    """Every point of metric ``key``, in step order (then time)."""
    return sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))


def sweep_energy(client: MlflowClient, parent: Run, children: list[Run]) -> tuple[float, float]:
    """(the sweep's energy, its energy in runs) as MLflow holds it, worked out here from the
    children's ``sweep_share_energy_j`` / ``sweep_gap_before_energy_j`` (``energy_j`` and 0 for
    runs without them) and the parent's ``energy.between_after_j.*`` tags, with ``math.fsum``
    as the writer does (docs/metrics.md, "Where a sweep's energy goes")."""
    shares = [c.data.metrics.get("sweep_share_energy_j", c.data.metrics["energy_j"]) for c in children]
    gaps = [c.data.metrics.get("sweep_gap_before_energy_j", 0.0) for c in children]
    after = [float(v) for k, v in client.get_run(parent.info.run_id).data.tags.items()
             if k.startswith("energy.between_after_j.")]
    return math.fsum(shares + gaps + after), math.fsum(shares)


def assert_sweep_total_exact(client: MlflowClient, parent: Run, children: list[Run]) -> None:
    """The sweep's last ``sweep_energy_j`` is its runs' shares and the between-runs energy, exactly
    (:func:`sweep_energy`); for runs that did not overlap, a run's share is its ``energy_j``.

    MLflow's own parent link (``mlflow.parentRunId``) must list exactly ``children``.  The writer
    sums with ``math.fsum`` (exactly rounded, whatever their order); so does this check, so the
    comparison is ``==``.
    """
    listed = client.search_runs([parent.info.experiment_id],
                                filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                max_results=1000)
    assert {r.info.run_id for r in listed} == {c.info.run_id for c in children}
    total, _in_runs = sweep_energy(client, parent, listed)
    last = history(client, parent.info.run_id, "sweep_energy_j")[-1]
    assert last.step == len(children)
    assert last.value == total


def assert_one_total_per_step(client: MlflowClient, parent: Run) -> None:
    """No sweep total logged twice for one step (a replay or a retry would): one point per finished
    run, and at the last step one more per member that left the sweep with time after its last run
    (``energy.between_after_j.<uid>``: the sweep's end adds that time, docs/metrics.md)."""
    points = history(client, parent.info.run_id, "sweep_energy_j")
    steps = [p.step for p in points]
    left = sum(1 for k in client.get_run(parent.info.run_id).data.tags if k.startswith("energy.between_after_j."))
    last = steps[-1] if steps else None
    assert all(steps.count(step) == 1 for step in set(steps) if step != last), steps
    assert steps.count(last) <= 1 + left, (steps, left)
    assert len({(p.step, p.value) for p in points}) == len(points), "the same total twice"


def named_sweep(uri: str, name: str, experiment: str = EXPERIMENT) -> tuple["Run", dict, dict]:
    """The one parent of the sweep ``name``, its children by run name, and every run of the
    experiment by run name."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    (parent,) = [r for r in found if r.data.tags.get("energy.kind") == "sweep" and r.data.tags["energy.sweep"] == name]
    children = {r.info.run_name: r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    return parent, children, {r.info.run_name: r for r in found}
