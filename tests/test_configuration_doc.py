"""docs/configuration.md has one row per setting, and each row says what the trait says.

A new trait without a row, a row without a trait, or a default, variable, fallback or meaning
that differs from the trait fails here, with the row to write.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ipython_energy import config as cfg

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
ROW = re.compile(r"^\| `(?P<name>[a-z_]+)` \| `(?P<env>[^`]+)` \| (?P<default>[^|]+) \| (?P<meaning>.*) \|$")
FALLBACK = re.compile(r"^(?P<own>\S+) \(else (?P<fallback>\S+)\)$")


def doc_rows() -> dict[str, dict[str, str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            assert m["name"] not in rows, f"docs/configuration.md lists {m['name']} twice"
            rows[m["name"]] = m.groupdict()
    return rows


def expected_row(name: str) -> str:
    trait = getattr(cfg.EnergySettings, name)
    default = "unset" if trait.default_value is None else f"`{trait.default_value}`"
    return f"| `{name}` | `{cfg.ENV_PREFIX}{name.upper()}` | {default} | {trait.help} |"


def test_every_setting_has_a_row_and_every_row_a_setting():
    rows = doc_rows()
    missing = [expected_row(name) for name in cfg.SETTING_NAMES if name not in rows]
    assert not missing, "docs/configuration.md lacks rows:\n" + "\n".join(missing)
    assert set(rows) <= set(cfg.SETTING_NAMES), f"rows for no setting: {sorted(set(rows) - set(cfg.SETTING_NAMES))}"


@pytest.mark.parametrize("name", cfg.SETTING_NAMES)
def test_row_says_what_the_trait_says(name):
    row = doc_rows().get(name)
    if row is None:
        pytest.fail(f"no row for {name}; add:\n{expected_row(name)}")
    trait = getattr(cfg.EnergySettings, name)
    default = "unset" if trait.default_value is None else f"`{trait.default_value}`"
    assert row["default"].strip() == default, f"default of {name}: the trait says {default}"
    assert row["meaning"] == trait.help, f"meaning of {name}: the trait's help is\n{trait.help}"
    own = cfg.ENV_PREFIX + name.upper()
    fallback = FALLBACK.match(row["env"])
    assert (fallback["own"] if fallback else row["env"]) == own


@pytest.mark.parametrize("name,fallback", [
    (name, m["fallback"]) for name, row in doc_rows().items() if (m := FALLBACK.match(row["env"]))])
def test_documented_fallback_variable_is_read(name, fallback):
    config, _ = cfg.from_env({fallback: "from-the-fallback"})
    assert getattr(config, name) == "from-the-fallback"

