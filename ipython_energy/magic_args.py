"""The arguments of ``%%energy`` and ``%energy``: parsed and checked, every mistake a ``UsageError``.

Pure functions of the words on the magic's line (no tracker, no shell), so that a line is
refused before anything is measured or logged.
"""

from __future__ import annotations

import argparse
import re
from typing import Any, Mapping, NamedTuple

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser

from .validate import QUOTE_LIMIT, check_name, check_param_key, check_positive, quote


def parse_params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--param takes KEY=VALUE, got {quote(item)} (for example --param lr=0.01)")
        key, value = item.split("=", 1)
        key = key.strip()
        try:
            check_param_key(key)
        except ValueError as exc:
            raise UsageError(f"--param {quote(item)}: {exc}") from None
        if key in params:
            raise UsageError(f"--param {quote(key)} is given twice ({quote(params[key])} and {quote(value)})")
        params[key] = value
    return params


def parse_count(text: str, flag: str) -> float:
    """A positive finite number given on the magic's line (``--units``, ``--timeout``)."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag} takes a number, not {quote(text)}") from None
    try:
        return check_positive(value, flag)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


class Once(argparse.Action):
    """An option that takes one value and may be given once: ``--run a --run b`` is an error, where
    argparse would silently keep ``b``."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_given_once", {})
        if self.dest in seen:
            raise argparse.ArgumentError(self, f"given twice ({quote(seen[self.dest])} and {quote(values)}); "
                                               "give it once")
        seen[self.dest] = values
        setattr(namespace, self.dest, values)


_NEGATIVE = re.compile(r"^-\.?[0-9]")


def parse_words(parser: MagicArgumentParser, words: list[str]) -> argparse.Namespace:
    """``parser.parse_args(words)``, with two fixes to argparse's reading of a magic's line.

    A value that starts like a negative number goes with its option (``--budget -5kJ`` is
    ``--budget=-5kJ``, which the option's check then refuses as not positive; argparse took
    ``-5kJ`` for an option and said "expected one argument").  And an error quotes at most
    :data:`~ipython_energy.validate.QUOTE_LIMIT` characters of any word it echoes.
    """
    takes_value = {s for a in parser._actions if a.option_strings and a.nargs is None for s in a.option_strings}
    glued: list[str] = []
    for word in words:
        if glued and glued[-1] in takes_value and _NEGATIVE.match(word):
            glued[-1] = f"{glued[-1]}={word}"
        else:
            glued.append(word)
    try:
        return parser.parse_args(glued)
    except UsageError as exc:
        message = str(exc)
        for word in sorted({w for w in glued if len(w) > QUOTE_LIMIT}, key=len, reverse=True):
            message = message.replace(word, quote(word))
        raise UsageError(message) from None


def parse_repeat(a: argparse.Namespace) -> tuple[int | None, int, Any]:
    """``--repeat N``, ``--warmup K`` and ``--cooldown`` of the ``%%energy`` line, checked."""
    from .repeats import parse_cooldown

    if a.repeat is None:
        if a.warmup is not None or a.cooldown is not None:
            raise UsageError("--warmup and --cooldown go with --repeat N")
        return None, 0, None
    if a.live:
        raise UsageError("--live does not combine with --repeat (the summary line follows the last run)")
    counts = []
    for flag, text, least in (("--repeat", a.repeat, 1), ("--warmup", a.warmup or "0", 0)):
        if not re.fullmatch(r"\d{1,6}", text.strip()) or int(text) < least:
            raise UsageError(f"{flag} takes a whole number of at least {least}, not {quote(text)}")
        counts.append(int(text))
    try:
        cooldown = parse_cooldown(a.cooldown)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--cooldown: {exc}") from None
    return counts[0], counts[1], cooldown


class CellArgs(NamedTuple):
    """The ``%%energy`` line, parsed and checked: a pure function of the line (see ``_parse_cell_args``)."""

    output: str | None
    run: str | None
    sweep: str | None
    params: Mapping[str, str]  # read-only: the same object serves every cell with this line
    units: tuple[float, str] | None
    quiet: bool
    no_log: bool
    live: bool
    repeat: int | None = None  # --repeat N: N repeats as one group (ipython_energy/repeats.py)
    warmup: int = 0
    cooldown: Any = None  # a repeats.Cooldown with --repeat


def checked_name(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    try:
        return check_name(value, what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
