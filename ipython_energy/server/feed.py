"""One sweep's chart data as a feed of versions, so a poll carries only what changed.

Every reply of the sweep view carries a ``version``.  A request that hands a recent version
back (``since``) gets a ``delta`` against it instead of the whole chart:

``{"base": <since>, "first": i, "last": j, "runs": [changed or new rows], "bins": [...]?,
"forecast": [...], "budget": [...]}``

The browser keeps the rows it has with ``first <= index <= last``, replaces those whose
index comes again in ``runs``, and takes ``bins`` when present (absent: unchanged).  An
unknown or too old ``since`` (another sweep, a restarted server, a tab asleep for long)
gets the whole chart again, so a client can always start over.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import OrderedDict
from typing import Any, Mapping


def _text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


class SweepFeed:
    """The recent versions of one sweep's chart datasets (thread-safe).

    ``keep`` versions are remembered (several tabs polling one sweep each get deltas); a
    version is only a row's JSON per run index, so 200 rows cost a few tens of kB each.
    """

    def __init__(self, keep: int = 8):
        self._nonce = secrets.token_hex(4)  # versions of another sweep or server never match
        self._count = 0
        self._keep = keep
        self._history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def publish(self, datasets: Mapping[str, Any], since: str | None) -> tuple[str, dict[str, Any] | None]:
        """Record ``datasets`` (``runs``, ``bins``, ``forecast``, ``budget``) as the newest
        version if they changed; return (its version, the delta against ``since`` or None
        when the whole chart must be sent)."""
        snap = {
            "runs": {row["index"]: _text(row) for row in datasets["runs"]},
            "bins": _text(datasets["bins"]),
            "rest": _text([datasets["forecast"], datasets["budget"]]),
        }
        with self._lock:
            latest = next(reversed(self._history), None)
            if latest is None or self._history[latest] != snap:
                self._count += 1
                latest = f"{self._nonce}.{self._count}"
                self._history[latest] = snap
                while len(self._history) > self._keep:
                    self._history.popitem(last=False)
            base = self._history.get(since) if since else None
        if base is None:
            return latest, None
        runs = [row for row in datasets["runs"] if base["runs"].get(row["index"]) != snap["runs"][row["index"]]]
        indices = [row["index"] for row in datasets["runs"]]
        delta: dict[str, Any] = {
            "base": since,
            "first": min(indices) if indices else 0,
            "last": max(indices) if indices else 0,
            "runs": runs,
            "forecast": datasets["forecast"],
            "budget": datasets["budget"],
        }
        if base["bins"] != snap["bins"]:
            delta["bins"] = datasets["bins"]
        return latest, delta
