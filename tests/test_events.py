"""Events: the records the tracker hands the writer, and their wire form (the spool's line format)."""

import json

import pytest

from ipython_energy import layout
from ipython_energy.events import (CellMetricsDraft, InvalidEvent, Metrics, RunEnd, RunEndDraft, RunStart, SweepEnd,
                                   SweepStart, SweepUpdate, from_wire)
from ipython_energy.measurement import DomainProvenance, Measurement

EVENTS = [
    SweepStart("s1", "grid", 1_000, "sqlite:///x.db", "exp", session="abc", planned=12, budget_j=5e4),
    RunStart("r1", "lr=0.1", 1_001, "sqlite:///x.db", "exp", sweep_uid="s1", params={"lr": "0.1"},
             tags={"energy.session": "abc"}),
    Metrics("r1", (("cell_energy_j", 2.5, 7, 1_002), ("cell_duration_s", 0.1, 7, 1_002))),
    RunEnd("r1", "FAILED", 1_003, (("energy_j", 2.5, 0, 1_003),), {"energy.methods": "cpu=estimated"}),
    RunEnd("r2", "KILLED", 1_004, tags={"energy.superseded": "true"}, delete=True),
    RunEnd("r4", "FINISHED", 1_008, (("optuna_value", 0.5, 0, 1_008),), {"optuna.state": "COMPLETE"},
           params={"lr": "0.01"}),
    SweepEnd("s1", "FINISHED", 1_005),
    RunStart("r3", "inner", 1_006, "sqlite:///x.db", "exp", parent_uid="r1", tags={"energy.parent_run": "lr=0.1"}),
    SweepUpdate("s1", 1_007, planned=24, budget_j=1e5),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.type)
def test_every_event_survives_its_journal_line(event):
    line = json.dumps(event.to_wire(), separators=(",", ":"))
    assert from_wire(json.loads(line)) == event


def test_journal_lines_of_the_previous_version_are_read():
    """The dicts the writer journalled before events were typed: same keys, some optional ones absent."""
    old = [
        {"type": "sweep_start", "uid": "s", "name": "grid", "planned": None, "budget_j": None, "t_ms": 5,
         "session": "k", "tracking_uri": "sqlite:///a.db", "experiment": "e"},
        {"type": "run_start", "uid": "r", "name": "a", "sweep_uid": "s", "params": {}, "tags": {}, "t_ms": 6,
         "tracking_uri": "sqlite:///a.db", "experiment": "e"},
        {"type": "metrics", "uid": "r", "metrics": [["live_energy_j", 50.0, 2, 7]]},
        {"type": "run_end", "uid": "r", "status": "FINISHED", "t_ms": 8, "metrics": [["energy_j", 9, 0, 8]],
         "tags": {"energy.build_error": "x"}},
        {"type": "sweep_end", "uid": "s", "status": "FINISHED", "t_ms": 9},
    ]
    events = [from_wire(line) for line in old]
    assert [type(e) for e in events] == [SweepStart, RunStart, Metrics, RunEnd, SweepEnd]
    assert events[2].rows == (("live_energy_j", 50.0, 2, 7),)
    assert events[3].energy_j() == 9.0 and events[3].delete is False
    assert events[1].parent_uid is None  # a run of an old journal is never nested


@pytest.mark.parametrize("line, says", [
    ({"typf": "metrics", "uid": "r"}, "no 'type' field"),
    ({"type": "nonsense", "uid": "r"}, "unknown event type 'nonsense'"),
    ({"type": "run_end", "uid": "r"}, "run_end: no 'status' field"),
    (["metrics"], "must be a JSON object"),
    ({"type": "metrics", "uid": 7}, "'uid' must be a string"),
    ({"type": "metrics", "uid": "r", "metrics": [["energy_j", "12.5", 0, 1]]}, "the value must be a number"),
    ({"type": "metrics", "uid": "r", "metrics": [["energy_j", True, 0, 1]]}, "the value must be a number"),
    ({"type": "metrics", "uid": "r", "metrics": [["energy_j", 1.0, 0]]}, "must be [key, value, step, timestamp_ms]"),
    ({"type": "metrics", "uid": "r", "metrics": [["energy_j", 1.0, "0", 1]]}, "whole numbers"),
    ({"type": "metrics", "uid": "r", "metrics": "energy_j=1"}, "must be a list"),
    ({"type": "run_end", "uid": "r", "status": "FINISHED", "t_ms": "5"}, "'t_ms' must be a whole number"),
    ({"type": "run_end", "uid": "r", "status": "FINISHED", "t_ms": 5, "delete": "no"}, "'delete' must be true or false"),
    ({"type": "sweep_start", "uid": "s", "name": "g", "t_ms": 1, "tracking_uri": "x", "experiment": "e",
      "budget_j": "5kJ"}, "'budget_j' must be a number or null"),
    ({"type": "run_start", "uid": "r", "name": "a", "t_ms": 1, "tracking_uri": "x", "experiment": "e",
      "params": {"lr": [1]}}, "'params' must be an object"),
])
def test_a_line_that_is_no_event_is_refused_with_what_is_wrong(line, says):
    with pytest.raises(InvalidEvent) as err:
        from_wire(line)
    assert says in str(err.value)


def test_a_key_no_event_field_uses_is_ignored():
    """A later version may add an optional field; this one reads the rest of the line."""
    assert from_wire({"type": "metrics", "uid": "r", "metrics": [], "pad": "x"}) == Metrics("r")


def _measurement() -> Measurement:
    prov = DomainProvenance(method="counter", sensor="nvml", interval_s=0.1, update_period_s=0.1)
    return Measurement(label="cell", energy_j=30.0, duration_s=2.0, power_mean_w=15.0, power_peak_w=20.0,
                       domains={"gpu0": 30.0}, idle_j=4.0, net_j=26.0, provenance={"gpu0": prov})


def test_drafts_finish_into_the_rows_the_layout_defines():
    m = _measurement()
    end = RunEndDraft("r", "FINISHED", 10, m, {"samples": 64.0}, {"data": (3.0, 0.5)}, "measured", cell_step=4).finish()
    expected = layout.rows(layout.run_metrics(m, units={"samples": 64.0}, stages={"data": (3.0, 0.5)}), 0, 10)
    expected += layout.rows(layout.cell_metrics(m), 4, 10)
    assert [list(r) for r in end.rows] == expected
    assert end.tags == layout.provenance_tags(m, idle_source="measured", unit="samples")
    assert end.energy_j() == 30.0
    # What Run.annotate added goes with the end; the run's own figures win over the same names.
    annotated = RunEndDraft("r", "FINISHED", 10, m, {}, {}, "measured", params={"lr": "0.1"},
                            extra_tags={"optuna.state": "COMPLETE", "energy.estimated": "maybe"},
                            extra_metrics={"optuna_value": 0.25, "energy_j": -1.0}).finish()
    assert annotated.params == {"lr": "0.1"}
    assert annotated.tags["optuna.state"] == "COMPLETE" and annotated.tags["energy.estimated"] == "false"
    assert annotated.energy_j() == 30.0 and ["optuna_value", 0.25, 0, 10] in [list(r) for r in annotated.rows]
    cell = CellMetricsDraft("r", m, 5, 11).finish()
    assert [list(r) for r in cell.rows] == layout.rows(layout.cell_metrics(m), 5, 11)
