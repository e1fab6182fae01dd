"""The local durable spool: an append-only, fsynced journal of the events sent to MLflow.

One journal per kernel session (``spool/<session>.jsonl``), one event per line with a
sequence number, plus ``<session>.acked`` saying how far MLflow is known to have it.
A live session holds an exclusive ``flock`` on ``<session>.lock``; a journal whose
lock nobody holds belongs to a dead kernel and may be adopted and replayed by the next
one.  Files are created 0600 inside a 0700 directory.

``<session>.held`` is a small file allocated (``posix_fallocate``) when the spool is created and
then only overwritten in place: on a full disk, where the journal cannot grow, the live writer
still records there how many events (runs, joules) it holds in memory only.  The kernel that
adopts a dead session reads it and reports what was lost (:meth:`Spool.held`).

``rejected/`` keeps events MLflow refused and journal lines replay could not read;
``discarded/`` keeps journals a person set aside with ``%energy spool discard``.  Neither folder
is ever read as a journal.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
import re
from typing import Any, Iterator, NamedTuple

from .paths import open_private, private_dir, read_json, write_json_atomic


class SpoolError(OSError):
    """The journal could not be written (disk full, read-only, …)."""


#: Bytes allocated for ``<session>.held``: one JSON object padded with spaces.
HELD_SIZE = 512


class Line(NamedTuple):
    """One line of a journal as read: its number (from 1), its ``seq`` and event, or why it is unreadable."""

    number: int
    seq: int | None
    event: dict[str, Any] | None
    error: str | None
    raw: bytes


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
        self.held_path = directory / f"{session}.held"
        self._held_fd: int | None = None
        self._seq = max((line.seq for line in self.lines() if line.seq is not None), default=0)
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
        spool = cls(directory, session, lock_fd)
        spool._allocate_held()
        return spool

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
        if not any((directory / f"{session}{ext}").exists() for ext in (".jsonl", ".held")):  # retired meanwhile
            os.close(lock_fd)
            return None
        return cls(directory, session, lock_fd)

    @staticmethod
    def sessions(directory: Path) -> list[str]:
        """Sessions that have a journal (or a count of held events) in ``directory``, oldest first.

        A session whose disk was full from its start may have a ``.held`` file and no journal.
        """
        found: dict[str, float] = {}
        try:
            for path in list(directory.glob("*.jsonl")) + list(directory.glob("*.held")):
                try:
                    mtime = path.stat().st_mtime
                except FileNotFoundError:
                    continue
                found[path.stem] = min(mtime, found.get(path.stem, mtime))
        except OSError:
            return []
        return sorted(found, key=lambda session: found[session])

    @staticmethod
    def held_by_a_live_process(directory: Path, session: str) -> bool:
        """Whether a process holds ``session``'s lock now (a live kernel, or a writer replaying it)."""
        try:
            fd = os.open(directory / f"{session}.lock", os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # releases the shared lock at once
        return False

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

    def keep_unreadable(self, line: Line) -> None:
        """Keep a journal line replay could not read in :attr:`rejected_path`, for a person to look at."""
        self.keep({"reason": f"{self.path.name}:{line.number}: {line.error}", "line": line.number,
                   "raw": line.raw.decode("utf-8", "replace").rstrip("\n")})

    def keep(self, record: dict[str, Any]) -> None:
        """Append ``record`` (a JSON object with a ``reason``) to :attr:`rejected_path`."""
        self.rejected_path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = open_private(self.rejected_path)
        try:
            os.write(fd, (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- events held in memory only (a full disk) ---------------------------------------------
    def _allocate_held(self) -> None:
        """Make ``<session>.held`` now, while there is room, so that it can be overwritten on a full disk."""
        try:
            fd = open_private(self.held_path, os.O_RDWR | os.O_CREAT)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, HELD_SIZE)
            os.pwrite(fd, _held_record(0, 0, 0.0), 0)
        except OSError:
            os.close(fd)
            return
        self._held_fd = fd

    def record_held(self, events: int, runs: int, energy_j: float) -> bool:
        """Overwrite the count of events held in memory only (in place: works on a full disk)."""
        if self._held_fd is None:
            return False
        try:
            os.pwrite(self._held_fd, _held_record(events, runs, energy_j), 0)
            os.fdatasync(self._held_fd)
        except OSError:
            return False
        return True

    def held(self) -> dict[str, Any] | None:
        """What a session recorded as held in memory only: ``{"events", "runs", "energy_j"}``, or None."""
        try:
            data = json.loads(self.held_path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), (int, float)) for k in
                                                 ("events", "runs", "energy_j")):
            return None
        return data

    # ---- rewriting and setting aside (``%energy spool``) ---------------------------------------
    def rewrite(self, events: list[dict[str, Any]]) -> None:
        """Replace the journal by ``events`` (numbered from 1, none acked), crash-safe.

        The new journal is written beside the old one and fsynced, the acknowledgement is set
        back to 0, then the new journal takes the old one's name: a crash in between leaves the
        old journal with nothing acked, whose replay is idempotent.
        """
        tmp = self.directory / f".{self.session}.rewrite"
        data = b"".join((json.dumps({"seq": i, **ev}, separators=(",", ":"), allow_nan=True) + "\n").encode()
                        for i, ev in enumerate(events, 1))
        fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        write_json_atomic(self.ack_path, {"acked": 0})
        os.replace(tmp, self.path)
        _fsync_dir(self.directory)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._seq, self._acked, self._torn = len(events), 0, False

    def set_aside(self, folder: str) -> Path:
        """Move the journal and its companions into ``<spool>/<folder>/`` and release it; returns the journal's new path."""
        target_dir = self.directory / folder
        target_dir.mkdir(mode=0o700, exist_ok=True)
        stem, n = self.session, 1
        while any((target_dir / f"{stem}{ext}").exists() for ext in (".jsonl", ".acked", ".held")):
            n += 1
            stem = f"{self.session}.{n}"
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for path, ext in ((self.path, ".jsonl"), (self.ack_path, ".acked"), (self.held_path, ".held")):
            try:
                os.replace(path, target_dir / f"{stem}{ext}")
            except FileNotFoundError:
                pass
        self.close(retire=True)  # nothing is left but the lock
        return target_dir / f"{stem}.jsonl"

    @property
    def acked(self) -> int:
        return self._acked

    @property
    def last_seq(self) -> int:
        return self._seq

    # ---- reading ------------------------------------------------------------------------
    def events(self) -> list[tuple[int, dict[str, Any]]]:
        """Every readable event, in order (acked ones included)."""
        return [(line.seq, line.event) for line in self.lines() if line.event is not None]

    def lines(self) -> Iterator[Line]:
        """Every line of the journal, with why it cannot be read where it cannot.

        A line cut short by a full disk whose event was journalled again later (the same
        ``seq`` on a later whole line: the writer retries it) is no loss and is left out.
        """
        try:
            with open(self.path, "rb") as f:
                raws = f.read().split(b"\n")
        except FileNotFoundError:
            return
        if raws and raws[-1] == b"":
            raws.pop()
        out: list[Line] = []
        for number, raw in enumerate(raws, 1):
            if not raw.strip():
                continue
            try:
                ev = json.loads(raw)
            except ValueError:
                m = _SEQ_PREFIX.match(raw)
                cut = number == len(raws) or not raw.rstrip().endswith(b"}")
                out.append(Line(number, int(m.group(1)) if m else None, None,
                                "a line cut short (a crash or a full disk)" if cut and m else "not JSON", raw))
                continue
            if not isinstance(ev, dict) or not isinstance(ev.get("seq"), int) or isinstance(ev.get("seq"), bool):
                out.append(Line(number, None, None, "no sequence number", raw))
                continue
            seq = ev.pop("seq")
            out.append(Line(number, seq, ev, None, raw))
        whole = {line.seq for line in out if line.event is not None}
        for line in out:
            if line.event is None and line.seq is not None and line.seq in whole:
                continue  # written again in full later
            yield line

    def _read_ack(self) -> int:
        data = read_json(self.ack_path)
        return int(data["acked"]) if isinstance(data, dict) and "acked" in data else 0

    # ---- closing ------------------------------------------------------------------------
    def close(self, retire: bool = False) -> None:
        """Close; with ``retire`` and everything acked, delete the journal."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._held_fd is not None:
            os.close(self._held_fd)
            self._held_fd = None
        if retire and self._acked >= self._seq:
            for path in (self.path, self.ack_path, self.held_path):
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


_SEQ_PREFIX = re.compile(rb'\s*\{"seq":(\d+),')


def _held_record(events: int, runs: int, energy_j: float) -> bytes:
    text = json.dumps({"events": events, "runs": runs, "energy_j": energy_j}, separators=(",", ":"))
    return text.encode().ljust(HELD_SIZE - 1) + b"\n"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
