"""A real PostgreSQL server for tests with many writers: a private data directory and port.

Debian's ``postgresql`` package (``make test-deps`` installs it) provides ``initdb`` and
``postgres`` under ``/usr/lib/postgresql/<version>/bin``.  PostgreSQL refuses to run as root,
so when the tests run as root the cluster belongs to the ``postgres`` system user that the
package creates, in a folder of its own under the system's temporary directory.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .net import free_port


def binaries() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def missing_reason() -> str | None:
    """Why no server can be started here, or None."""
    if binaries() is None:
        return "PostgreSQL is not installed (make test-deps installs Debian's postgresql)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres system user to own the cluster"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install '.[test]')"
    return None


class PostgresServer:
    """``initdb`` + ``postgres`` on 127.0.0.1:<free port>, trust authentication, stopped by :meth:`stop`."""

    def __init__(self) -> None:
        self.bin = binaries()
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="ipython-energy-pg-"))
        self.data = self.root / "data"
        self.proc: subprocess.Popen | None = None
        self._databases = 0

    def _own(self) -> None:
        if self.user is not None:
            shutil.chown(self.root, self.user, self.user)
            os.chmod(self.root, 0o700)

    def start(self, timeout_s: float = 60.0) -> None:
        self._own()
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                        "--no-sync", "-E", "UTF8"],
                       user=self.user, check=True, capture_output=True, timeout=120)
        log = open(self.root / "server.log", "ab")
        # A private socket folder and port; fsync off: the data is thrown away after the tests.
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.root), "-c", "fsync=off", "-c", "max_connections=200"],
            user=self.user, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        import psycopg

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with psycopg.connect(self._dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise RuntimeError("postgres did not come up")

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URI (what ``mlflow server`` takes)."""
        import psycopg

        self._databases += 1
        name = f"mlflow{self._databases}"
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown: clients are disconnected
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)
