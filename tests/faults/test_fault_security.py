"""No one gets in: hostile names stay inert in the sweep's HTML artifact, local state is private,
nothing of ours listens on a port, and the sidebar's routes take no location from the client.

Hardware seam: the replay sensor (flat trace).  MLflow is a real sqlite store; the magic runs in
a real IPython shell.  Referenced from docs/reliability.md, and not repeated here:

* tests/server/test_handlers.py::test_every_route_refuses_requests_without_a_token (403 on every
  route without, or with a wrong, token; a real in-process Jupyter server)
* tests/server/test_handlers.py::test_no_route_takes_a_uri_or_path (a URI in the path matches no
  route; a ``tracking_uri`` query parameter is ignored)
* tests/test_check_handlers / .ci/check_handlers.py (every handler method is @authenticated)
* tests/browser/test_sidebar.py (hostile names inert in the sidebar panel, real Chromium)
"""

from __future__ import annotations

import ast
import json
import os
import re
import stat
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

import ipython_energy
from tests.helpers.mlflow_readback import runs, split_sweep
from tests.helpers.net import listening_sockets
from tests.helpers.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

HOSTILE_SWEEP = "</script><script>alert('sweep')</script>"
HOSTILE_RUN = "<img src=x onerror=alert(1)>"
HOSTILE_VALUES = ['"><svg onload=alert(2)>', "</script><script>alert(3)</script>", "<!--", "]]>", "&lt;b&gt;pre-escaped&amp;"]


class Tags(HTMLParser):
    """Every element the browser would build, with its attribute names, and the scripts' text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, tuple[str, ...]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, tuple(sorted(name for name, _ in attrs))))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def parse(text: str) -> Tags:
    tags = Tags()
    tags.feed(text)
    tags.close()
    return tags


def sweep_artifact(ip, uri, tmp_path, sweep: str, named_runs: list[tuple[str, dict[str, str]]]) -> str:
    """Log sweep ``sweep`` with one cell per ``(run name, params)``; return its HTML artifact."""
    import shlex

    ip.run_line_magic("energy", f"sweep {shlex.quote(sweep)}")
    for name, params in named_runs:
        args = " ".join(f"--param {shlex.quote(f'{k}={v}')}" for k, v in params.items())
        assert ip.run_cell(f"%%energy --quiet --run {shlex.quote(name)} {args}\npass").success
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(120)
    client, found = runs(uri)
    (parent,) = [r for r in split_sweep(found)[0] if r.info.run_name == sweep]
    out = tmp_path / f"artifact-{parent.info.run_id}"
    out.mkdir()
    path = client.download_artifacts(parent.info.run_id, "energy_sweep.html", str(out))
    return Path(path).read_text(encoding="utf-8")


@pytest.fixture
def ip(open_shell, flat_trace, sqlite_uri):
    return open_shell(env={"IPYTHON_ENERGY_SENSORS": f"replay:{flat_trace}", "MLFLOW_TRACKING_URI": sqlite_uri},
                      warm=False)


def test_hostile_names_stay_inert_in_the_sweep_html_artifact(ip, sqlite_uri, tmp_path):
    benign = sweep_artifact(ip, sqlite_uri, tmp_path, "benign",
                            [("run a", {"note": "plain"}), ("run b", {"note": "plain"})])
    hostile = sweep_artifact(ip, sqlite_uri, tmp_path, HOSTILE_SWEEP,
                             [(HOSTILE_RUN, {"note": v}) for v in HOSTILE_VALUES[:2]] +
                             [(f"{HOSTILE_RUN} {i}", {"note": v}) for i, v in enumerate(HOSTILE_VALUES[2:])])
    good, bad = parse(benign), parse(hostile)
    # The same page structure as with benign names: no element and no attribute came from a name.
    assert sorted(set(bad.elements)) == sorted(set(good.elements))
    assert not any(tag in ("img", "svg", "iframe", "object") for tag, _ in bad.elements)
    assert not any(a.startswith("on") for _, attrs in bad.elements for a in attrs)
    assert len(bad.scripts) == len(good.scripts)
    # The names are there, as data: in the spec (JSON inside a data-only script) and as text.
    spec_text = next(s for s in bad.scripts if s.lstrip().startswith("{"))
    spec = json.dumps(json.loads(spec_text))
    for name in (HOSTILE_SWEEP, HOSTILE_RUN):
        assert json.dumps(name)[1:-1] in spec
    assert "</script" not in spec_text.lower() and "<!--" not in spec_text
    for code in bad.scripts:
        if code is spec_text:
            continue
        assert "alert(" not in code, "a name reached executable script"
    visible = re.sub(r"<script.*?</script>", "", hostile, flags=re.S | re.I)
    assert "<img" not in visible and "<svg" not in visible and "&lt;img src=x onerror=alert(1)&gt;" in visible


def _modes(path: Path):
    return stat.S_IMODE(path.stat().st_mode)


def test_local_state_is_0600_in_0700_directories_whatever_the_umask(open_shell, flat_trace, sqlite_uri,
                                                                    energy_home):
    old = os.umask(0)  # the most permissive umask: the modes must not come from it
    try:
        ip = open_shell(env={"IPYTHON_ENERGY_SENSORS": f"replay:{flat_trace}", "MLFLOW_TRACKING_URI": sqlite_uri})
        ip.run_line_magic("energy", "sweep private")
        assert ip.run_cell("%%energy --quiet --param k=1\nimport time\ntime.sleep(0.1)").success
        assert ipython_energy.flush(120)
        wait_until(lambda: any((energy_home / "live").glob("*.json")), timeout_s=10)
        subdirs = {p.name for p in energy_home.iterdir() if p.is_dir()}
        assert {"spool", "kernels", "live", "locks"} <= subdirs, subdirs
        assert _modes(energy_home) == 0o700
        files = 0
        for d in [energy_home, *(p for p in energy_home.rglob("*") if p.is_dir())]:
            assert _modes(d) == 0o700, d
        for f in (p for p in energy_home.rglob("*") if p.is_file()):
            assert _modes(f) == 0o600, f
            files += 1
        assert files >= 5  # journal, its ack and lock, the kernel registration, the live file, locks
        assert not any(p.is_symlink() for p in energy_home.rglob("*"))
    finally:
        os.umask(old)


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc/net")
def test_nothing_of_ours_listens_on_a_port(open_shell, flat_trace, sqlite_uri):
    before = listening_sockets()
    ip = open_shell(env={"IPYTHON_ENERGY_SENSORS": f"replay:{flat_trace}", "MLFLOW_TRACKING_URI": sqlite_uri})
    ip.run_line_magic("energy", "sweep ports")
    for i in range(3):
        assert ip.run_cell(f"%%energy --quiet --param i={i}\npass").success
    ip.run_line_magic("energy", "")
    ip.run_line_magic("energy", "end")
    assert ipython_energy.flush(120)
    time.sleep(1.5)  # the live file and the live series have been written meanwhile
    assert listening_sockets() == before == {}


# ---- the sidebar's routes: no client-supplied location, ever (static, no server needed) -----------------

def test_sidebar_routes_read_nothing_from_the_request_but_opaque_ids():
    """Handlers read no body, header, cookie or query of their own choosing.  The only request input
    is an id: a path group, or a query argument read by a method that accepts only a whole match
    of an id pattern (HTTP 400 otherwise); every id pattern is a fixed-length hex string (a version
    adds a dot and a number of bounded length)."""
    source = (ROOT / "ipython_energy" / "server" / "handlers.py").read_text()
    tree = ast.parse(source)
    readers = {"get_argument", "get_arguments", "get_query_arguments", "get_body_argument",
               "get_body_arguments", "get_json_body", "get_cookie", "get_secure_cookie"}
    request_parts = {"body", "arguments", "query_arguments", "body_arguments", "files", "query", "uri",
                     "headers", "path"}
    offenders = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr in readers:
                offenders.append(f"line {node.lineno}: {node.attr}")
            if node.attr in request_parts and isinstance(node.value, ast.Attribute) and node.value.attr == "request":
                offenders.append(f"line {node.lineno}: request.{node.attr}")
    assert offenders == []

    patterns = dict(re.findall(r'^(_[A-Z_]+_RE) = r"([^"]*)"$', source, flags=re.M))
    assert patterns, "id patterns not found"
    for name, pattern in patterns.items():
        # a fixed-length hex id, or a poll's version: a fixed-length hex id, a dot, a bounded number
        assert re.fullmatch(r"\[0-9a-f(A-F)?\]\{\d+\}(\\\.\[0-9\]\{1,\d+\})?", pattern), \
            f"{name} = {pattern!r} is not a hex id"
    groups = re.findall(r"\(\?P<\w+>\{(\w+)\}\)", source)
    assert groups and set(groups) <= set(patterns), groups

    def called(node) -> set[str]:
        return {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "")
                for c in ast.walk(node) if isinstance(c, ast.Call)}

    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    query_readers = {f.name for f in functions if "get_query_argument" in called(f)}
    for f in functions:
        if f.name in query_readers:
            assert {"fullmatch", "HTTPError"} <= called(f), f"{f.name} reads the query without checking an id"
    for call in (c for c in ast.walk(tree) if isinstance(c, ast.Call)):
        name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
        if name in query_readers:
            used = [a.id for a in call.args if isinstance(a, ast.Name) and a.id != "self"]
            assert used and set(used) <= set(patterns), f"line {call.lineno}: {name} without an id pattern"
