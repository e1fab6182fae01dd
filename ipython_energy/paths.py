"""Where ipython-energy keeps local state, created private to the user (0700 dirs, 0600 files)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def home() -> Path:
    """``$IPYTHON_ENERGY_HOME``, else ``$XDG_DATA_HOME/ipython-energy``, else ``~/.local/share/ipython-energy``."""
    env = os.environ.get("IPYTHON_ENERGY_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(xdg) / "ipython-energy"


def private_dir(*parts: str, base: Path | None = None) -> Path:
    """Create (if needed) and return ``base/parts`` (``base``: :func:`home`), each level mode 0700."""
    path = home() if base is None else base
    for part in ("",) + parts:
        path = path / part if part else path
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (path.stat().st_mode & 0o777) != 0o700:
            os.chmod(path, 0o700)
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """Open a file descriptor created with mode 0600 (the umask cannot widen it)."""
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically, mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None if it is missing or half-written."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
