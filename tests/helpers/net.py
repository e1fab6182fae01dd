"""Local ports: a free one for a server under test, and the ones a process listens on."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_sockets(pid: int | str = "self") -> dict[str, list[str]]:
    """The local addresses (hex, as in ``/proc/net``) on which ``pid`` listens (TCP LISTEN) or is
    bound to a port (UDP), by protocol.  Linux only: read from ``/proc/<pid>/fd`` and ``/proc/<pid>/net``."""
    owned = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            owned.add(target[len("socket:["):-1])
    found: dict[str, list[str]] = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        table = Path(f"/proc/{pid}/net/{proto}")
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            bound = state == "0A" if proto.startswith("tcp") else int(local.split(":")[1], 16) != 0
            if bound and inode in owned:
                found.setdefault(proto, []).append(local)
    return found
