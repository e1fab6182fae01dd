"""Checks on what a user hands us (names, params, units) and the one exception-to-status rule.

Every check raises ``ValueError`` with a message that says what is wrong and what is allowed;
the magic turns it into ``UsageError``. Nothing here imports MLflow or IPython.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Mapping


def status_for(exc_type: type[BaseException] | None) -> str:
    """The MLflow run status for a block that ended with ``exc_type`` (None: it ended normally)."""
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"


#: The most characters of a bad value an error message quotes (:func:`quote`).
QUOTE_LIMIT = 80


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``value`` as an error message shows it: its ``repr``, cut to about ``limit`` characters.

    Every message that echoes what a user handed in goes through here, so that a 10,000-character
    value gives a one-line error: ``'kkkk…' (10000 characters)``.
    """
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


#: Bidirectional controls (LRE, RLE, PDF, LRO, RLO, LRI, RLI, FSI, PDI, LRM, RLM, ALM): they make a
#: name display in another order than it is stored (U+202E shows ``abc\u202Egnp.exe`` as ``abcexe.png``).
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def check_name(name: Any, what: str) -> str:
    if not isinstance(name, str):
        raise ValueError(f"{what} name must be a string, not {type(name).__name__}")
    cleaned = name.strip()
    if not cleaned:
        raise ValueError(f"{what} name must not be empty")
    if len(cleaned) > 250:
        raise ValueError(f"{what} name is too long ({len(cleaned)} characters; at most 250)")
    if any(unicodedata.category(c) == "Cc" for c in cleaned):
        raise ValueError(f"{what} name must not contain control characters")
    bidi = sorted({c for c in cleaned if c in BIDI_CONTROLS})
    if bidi:
        found = ", ".join(f"U+{ord(c):04X}" for c in bidi)
        raise ValueError(f"{what} name must not contain bidirectional control characters ({found}): they make "
                         "it display in another order than it is stored")
    return cleaned


# MLflow stores param keys made of letters, digits, _ - . : / and spaces, and no path tricks.
_PARAM_KEY = re.compile(r"^[\w.\- :/]+$")


def check_param_key(key: Any) -> str:
    key = check_name(key, "param")
    if not _PARAM_KEY.match(key) or ".." in key or key.startswith("/") or "//" in key:
        raise ValueError(f"param name {quote(key)} cannot be stored by MLflow: use letters, digits, "
                         "spaces and _ - . : / (no '..', no leading or double '/')")
    return key


def check_params(params: Mapping[str, Any] | None) -> dict[str, str]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping of name to value, not {type(params).__name__}")
    out = {}
    for key, value in params.items():
        key = check_param_key(key)
        text = str(value)
        if len(text) > 6000:
            raise ValueError(f"param {quote(key)} is too long for MLflow ({len(text)} characters; at most 6000)")
        out[key] = text
    return out


def check_positive(n: Any, what: str) -> float:
    """``n`` as a float if it is a finite number above zero (a count, a timeout in seconds)."""
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise ValueError(f"{what} must be a number, not {quote(n)}")
    n = float(n)
    if not math.isfinite(n) or n <= 0:
        raise ValueError(f"{what} must be a positive finite number, not {quote(n)}")
    return n


def check_units(n: Any, unit: Any) -> tuple[float, str]:
    n = check_positive(n, "units")
    if n > 1e18:
        raise ValueError(f"units {quote(n)} is implausibly large (at most 1e18)")
    return n, check_name(unit, "unit")


_ENERGY_RE = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_ENERGY_UNITS: dict[str, float] = {
    "": 1.0, "j": 1.0, "kj": 1e3, "mj": 1e6, "gj": 1e9,
    "wh": 3600.0, "kwh": 3.6e6, "mwh": 3.6e9,
}


def parse_energy(text: str | float | int) -> float:
    """``"5kJ"`` → 5000.0; accepts J, kJ, MJ, GJ, Wh, kWh, MWh (case-insensitive) or a bare number of joules.

    Raises ValueError for anything else, for negative, zero, NaN or infinite amounts (a negative
    amount is parsed, so that ``-5kJ`` is told it must be positive rather than that it is no energy).
    """
    if isinstance(text, bool):
        raise ValueError(f"not an energy: {quote(text)}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _ENERGY_RE.match(str(text))
        if not m:
            raise ValueError(f"not an energy: {quote(text)} (try 5kJ, 2.5MJ, 0.3kWh or a number of joules)")
        unit = m.group(2).lower()
        if unit not in _ENERGY_UNITS:
            raise ValueError(f"unknown energy unit {quote(m.group(2))} in {quote(text)} (use J, kJ, MJ, Wh or kWh)")
        value = float(m.group(1)) * _ENERGY_UNITS[unit]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"an energy budget must be a positive, finite amount, not {quote(text)}")
    return value


_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_UNITS: dict[str, float] = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str | float | int) -> float:
    """``"30s"`` → 30.0; accepts ms, s, min (or m), h, or a bare number of seconds; zero is allowed.

    Raises ValueError for anything else, and for negative, NaN or infinite durations.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {quote(text)}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _DURATION_RE.match(str(text))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _DURATION_UNITS:
            raise ValueError(f"not a duration: {quote(text)} (try 30s, 500ms, 2min or a number of seconds)")
        value = float(m.group(1)) * _DURATION_UNITS[unit]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a duration must be a finite number of seconds, at least 0, not {quote(text)}")
    return value
