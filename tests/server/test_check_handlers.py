""".ci/check_handlers.py: passes on our handlers, fails on an unauthenticated method."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / ".ci" / "check_handlers.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True)


def test_our_handlers_pass():
    result = run()
    assert result.returncode == 0, result.stdout
    assert "(3 files, 5 routes)" in result.stdout  # experiments, experiment, sweep, session, poll


def test_a_route_to_a_class_that_is_not_a_checked_handler_fails(tmp_path):
    bad = tmp_path / "routes.py"
    bad.write_text(
        "import tornado.web\nfrom jupyter_server.base.handlers import APIHandler\n"
        "class Ok(APIHandler):\n    @tornado.web.authenticated\n    def get(self): pass\n"
        "class Base:\n    pass\nclass Sneaky(Base):\n    def get(self): pass\n"
        "def setup(web_app):\n    web_app.add_handlers('.*$', [('/ok', Ok), ('/sneaky', Sneaky)])\n")
    result = run(str(bad))
    assert result.returncode == 1
    assert "a route goes to Sneaky" in result.stdout and "Ok" not in result.stdout


def test_a_method_without_the_decorator_fails(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import tornado.web\nfrom tornado.web import authenticated as auth\n"
        "from jupyter_server.base.handlers import APIHandler\n"
        "class Ok(APIHandler):\n    @auth\n    def get(self): pass\n"
        "class Bad(APIHandler):\n    @tornado.web.authenticated\n    def get(self): pass\n"
        "    async def delete(self): pass\n")
    result = run(str(bad))
    assert result.returncode == 1
    assert "Bad.delete lacks @tornado.web.authenticated" in result.stdout and "Ok.get" not in result.stdout
