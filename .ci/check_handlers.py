#!/usr/bin/env python3
"""Static check: every HTTP method of every handler in ipython_energy/server carries
``@tornado.web.authenticated``, and every route goes to such a handler.  Exits 1 and names
the offenders otherwise.

A handler is a class whose bases include a name ending in ``Handler``; its HTTP methods
are ``get``, ``head``, ``post``, ``put``, ``patch``, ``delete`` and ``options``.  A route is a
``(pattern, HandlerClass)`` tuple in a ``web_app.add_handlers(...)`` call; its class must be a
handler defined in the same module (so that the check above covered it).
Usage: python .ci/check_handlers.py [FILES...]  (default: ipython_energy/server/*.py)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

HTTP_METHODS = {"get", "head", "post", "put", "patch", "delete", "options"}
ROOT = Path(__file__).resolve().parents[1]


def _name(node: ast.expr) -> str:
    """Dotted name of a decorator or base (``tornado.web.authenticated``), or ``""``."""
    if isinstance(node, ast.Call):
        return _name(node.func)
    if isinstance(node, ast.Attribute):
        inner = _name(node.value)
        return f"{inner}.{node.attr}" if inner else node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _authenticated_aliases(tree: ast.Module) -> set[str]:
    """Names that mean tornado.web.authenticated in this module."""
    names = {"tornado.web.authenticated"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "tornado.web":
            names |= {a.asname or a.name for a in node.names if a.name == "authenticated"}
        if isinstance(node, ast.ImportFrom) and node.module == "tornado":
            names |= {f"{a.asname or a.name}.authenticated" for a in node.names if a.name == "web"}
    return names


def routes(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, class name) of each route in the module's ``add_handlers`` calls."""
    found = []
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and _name(call.func).endswith("add_handlers"):
            for arg in call.args:
                for item in getattr(arg, "elts", []):
                    if isinstance(item, ast.Tuple) and len(item.elts) >= 2:
                        found.append((item.lineno, _name(item.elts[1])))
    return found


def check(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    ok_names = _authenticated_aliases(tree)
    problems = []
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    handlers = {c.name for c in classes if any(_name(b).endswith("Handler") for b in c.bases)}
    for line, name in routes(tree):
        if name not in handlers:
            problems.append(f"{path}:{line}: a route goes to {name or 'something'}, not a handler class of this module")
    for cls in classes:
        if cls.name not in handlers:
            continue
        for fn in cls.body:
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name in HTTP_METHODS:
                if not any(_name(d) in ok_names for d in fn.decorator_list):
                    problems.append(f"{path}:{fn.lineno}: {cls.name}.{fn.name} lacks @tornado.web.authenticated")
    return problems


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or sorted((ROOT / "ipython_energy" / "server").glob("*.py"))
    problems = [p for f in files for p in check(f)]
    for p in problems:
        print(p)
    if not problems:
        n = sum(len(routes(ast.parse(f.read_text()))) for f in files)
        print(f"check_handlers: every handler method is authenticated, every route goes to a handler "
              f"({len(files)} files, {n} routes)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
