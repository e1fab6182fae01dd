"""The local durable spool: an append-only, fsynced journal of the events sent to MLflow.

One journal per kernel session (``spool/<session>.jsonl``), one event per line with a
sequence number, plus ``<session>.acked`` saying how far MLflow is known to have it.
A live session holds an exclusive ``flock`` on ``<session>.lock``; a journal whose
lock nobody holds belongs to a dead kernel and may be adopted and replayed by the next
one.  Files are created 0600 inside a 0700 directory.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any, Iterator

from .paths import open_private, private_dir, read_json, write_json_atomic


class SpoolError(OSError):
    """The journal could not be written (disk full, read-only, …)."""


class Spool:
    """The journal of one session.  Only one process at a time holds it (by flock)."""

    def __init__(self, directory: Path, session: str, lock_fd: int):
        self.directory = directory
        self.session = session
        self.path = directory / f"{session}.jsonl"
        self.ack_path = directory / f"{session}.acked"
        self._lock_fd = lock_fd
        self._fd: int | None = None
        self._torn = False  # the last write may have left a partial line without its newline
        events = list(self._read_all())
        self._seq = events[-1][0] if events else 0
        self._acked = self._read_ack()

    # ---- opening ------------------------------------------------------------------------
    @classmethod
    def create(cls, session: str, directory: Path | None = None) -> "Spool":
        """The journal of a new, live session (raises SpoolError if it cannot be made)."""
        try:
            directory = directory or private_dir("spool")
            lock_fd = open_private(directory / f"{session}.lock", os.O_RDWR | os.O_CREAT)
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise SpoolError(exc.errno, f"cannot create the spool for session {session}: {exc}") from exc
        return cls(directory, session, lock_fd)

    @classmethod
    def adopt(cls, directory: Path, session: str) -> "Spool | None":
        """Take over a dead session's journal, or None if its owner is alive (or another adopter won)."""
        try:
            lock_fd = open_private(directory / f"{session}.lock", os.O_RDWR | os.O_CREAT)
        except OSError:
            return None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            return None
        if not (directory / f"{session}.jsonl").exists():  # retired meanwhile
            os.close(lock_fd)
            return None
        return cls(directory, session, lock_fd)

    @staticmethod
    def sessions(directory: Path) -> list[str]:
        """Sessions that have a journal in ``directory``, oldest first."""
        try:
            paths = sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return []
        return [p.stem for p in paths]

    # ---- writing ------------------------------------------------------------------------
    def append(self, event: dict[str, Any]) -> int:
        """Write ``event`` durably (write + fsync) and return its sequence number."""
        seq = self._seq + 1
        line = (json.dumps({"seq": seq, **event}, separators=(",", ":"), allow_nan=True) + "\n").encode()
        try:
            if self._fd is None:
                self._fd = open_private(self.path)
                self._torn = _ends_torn(self.path)  # a line a crash cut short
            if self._torn:
                # Start clean after a partial line.  Written together with the event, so that a
                # failure leaves at most one more partial line, never a glued pair.
                line = b"\n" + line
            written = os.write(self._fd, line)
            if written != len(line):
                self._torn = written > 0 or self._torn
                raise OSError(28, "No space left on device (short write)")
            self._torn = False
            os.fsync(self._fd)
        except OSError as exc:
            # A partial line is skipped by the reader; the next append starts a fresh line.
            if self._fd is not None and self._torn:
                try:
                    if os.write(self._fd, b"\n") == 1:
                        self._torn = False
                except OSError:
                    pass
            raise SpoolError(exc.errno, f"spool write failed: {exc.strerror or exc}") from exc
        self._seq = seq
        return seq

    @property
    def rejected_path(self) -> Path:
        """``rejected/<session>.jsonl``: a folder of its own, never taken for a dead session's journal."""
        return self.directory / "rejected" / f"{self.session}.jsonl"

    def reject(self, event: dict[str, Any], reason: str) -> None:
        """Keep an event MLflow refused in :attr:`rejected_path`, for a person to look at."""
        line = json.dumps({"reason": reason, "event": event}, separators=(",", ":"), default=str) + "\n"
        self.rejected_path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = open_private(self.rejected_path)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def ack(self, seq: int) -> None:
        """Record that MLflow has every event up to ``seq``."""
        if seq <= self._acked:
            return
        self._acked = seq
        try:
            write_json_atomic(self.ack_path, {"acked": seq})
        except OSError:
            pass  # the events stay unacked on disk; replay is idempotent

    @property
    def acked(self) -> int:
        return self._acked

    @property
    def last_seq(self) -> int:
        return self._seq

    # ---- reading ------------------------------------------------------------------------
    def events(self) -> list[tuple[int, dict[str, Any]]]:
        """Every readable event, in order (acked ones included)."""
        return list(self._read_all())

    def _read_all(self) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            for raw in f:
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue  # a line cut short by a crash or a full disk
                if isinstance(ev, dict) and isinstance(ev.get("seq"), int):
                    seq = ev.pop("seq")
                    yield seq, ev

    def _read_ack(self) -> int:
        data = read_json(self.ack_path)
        return int(data["acked"]) if isinstance(data, dict) and "acked" in data else 0

    # ---- closing ------------------------------------------------------------------------
    def close(self, retire: bool = False) -> None:
        """Close; with ``retire`` and everything acked, delete the journal."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if retire and self._acked >= self._seq:
            for path in (self.path, self.ack_path):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
        if self._lock_fd is not None:
            try:
                if retire and self._acked >= self._seq:
                    (self.directory / f"{self.session}.lock").unlink()
            except FileNotFoundError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None


def _ends_torn(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:
        return False
