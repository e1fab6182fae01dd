"""Joining another process's sweep by its MLflow run id.

A sweep is its name in its experiment, and a process joins it by that name without asking
MLflow anything (the writer finds the parent run, or makes it).  A launcher may hold the
parent's run id instead (MLflow's UI shows it; ``mlflow.active_run()`` gives it): then the
name and experiment must come from that run, so :func:`sweep_of_run` asks MLflow once, on the
caller's thread, before anything starts.  An identifier of 32 hex digits that is no run's id is
a name like any other (a launcher's ``uuid4().hex``).
"""

from __future__ import annotations

import re
from pathlib import Path

_RUN_ID = re.compile(r"[0-9a-f]{32}")


class LookupFailed(Exception):
    """MLflow could not say whether the run exists (not answering, or refusing)."""


def is_run_id(text: str) -> bool:
    """Whether ``text`` has the form of an MLflow run id (32 lower-case hex digits)."""
    return _RUN_ID.fullmatch(text) is not None


def sweep_of_run(tracking_uri: str, run_id: str, timeout_s: float) -> tuple[str, str] | None:
    """``(sweep name, experiment name)`` of the sweep whose parent run is ``run_id``; None when no
    run has that id.  Raises :class:`LookupFailed` when MLflow does not answer within about
    ``timeout_s`` per request, and for a run that exists but is not a sweep's parent."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        return None  # no store yet, so no run (asking would create the store here)
    from .transport import Pace, writer_client

    try:
        from mlflow.exceptions import MlflowException

        client = writer_client(tracking_uri, Pace(timeout_s=timeout_s))
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        tags = run.data.tags
        if tags.get("energy.kind") != "sweep" or not tags.get("energy.sweep"):
            raise LookupFailed(f"run {run_id} ({run.info.run_name!r}) is not the parent run of a sweep")
        return tags["energy.sweep"], client.get_experiment(run.info.experiment_id).name
    except LookupFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the client raised, said in one line
        from .transport import describe_error

        raise LookupFailed(describe_error(exc)) from exc

