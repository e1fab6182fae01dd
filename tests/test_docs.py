"""The docs name tests as their evidence (docs/reliability.md, docs/benchmarks.md, …): every test
they name must exist, so a renamed or removed test cannot leave a claim without its check."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ``tests/x.py::name`` or ``tests/x.py``, and ``::other`` / ``…::other`` that name more tests of the last file
# (``…::other`` in a table row: a test of the file the row above named)
_REF = re.compile(r"(tests/[\w/]+\.py)(?:::(\w+))?|(?<![\w/.])(…)?::(\w+)")


def named_tests() -> list[tuple[str, tuple[str, ...], str | None]]:
    """(doc, the files the test may be in, test name or None) for every reference in docs/*.md and README.md."""
    out = []
    for doc in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]:
        seen: list[str] = []
        for m in _REF.finditer(doc.read_text()):
            if m.group(1):
                seen.append(m.group(1))
                out.append((doc.name, (m.group(1),), m.group(2)))
            elif seen:
                out.append((doc.name, tuple(seen) if m.group(3) else (seen[-1],), m.group(4)))
    return out


def test_every_test_the_docs_name_exists():
    refs = named_tests()
    assert len(refs) > 50  # the docs do cite their tests
    missing = []
    for doc, paths, name in refs:
        files = [ROOT / p for p in paths if (ROOT / p).is_file()]
        if not files:
            missing.append(f"{doc}: {paths[-1]}")
        elif name is not None and not any(re.search(rf"^\s*(async\s+)?def {name}\(", f.read_text(), re.M)
                                          for f in files):
            missing.append(f"{doc}: {paths[-1]}::{name}")
    assert not missing, "\n".join(sorted(set(missing)))
