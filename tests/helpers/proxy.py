"""A real HTTP proxy in front of a real ``mlflow server``, with faults on the way back.

Every request is forwarded to the server, and so processed and committed there, before the
proxy decides what the client gets: the server's answer, the answer ``latency_s`` later, an
HTTP 500 instead of it (``fail_rate``, or the next ``fail_next`` requests), or a connection
closed without a word (``drop_rate``).  With ``down`` set, every connection is closed unanswered
and nothing is forwarded (the server is out of reach).  The faults are drawn from a seeded ``random.Random``,
so a run is repeatable up to thread timing.  ``log`` keeps ``(method, path, what the client got)``.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from tests.helpers.net import free_port

HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "content-length", "host"}


class FaultyProxy:
    def __init__(self, upstream: str, *, seed: int = 13, latency_s: float = 0.0, fail_rate: float = 0.0,
                 drop_rate: float = 0.0):
        up = urlsplit(upstream)
        self.upstream = (up.hostname, up.port)
        self.latency_s = latency_s
        self.fail_rate = fail_rate
        self.drop_rate = drop_rate
        self.fail_next = 0  # the next N requests (whose path ends with fail_path) are answered 500
        self.fail_path = ""
        self.down = False
        self.random = random.Random(seed)
        self.log: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self.port = free_port()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as requests' pool expects

            def log_message(self, *args):  # no lines on stderr per request
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.down:
                    proxy._record(self.command, self.path, "down")
                    self._drop()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=300)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    status, answer_headers = answer.status, answer.getheaders()
                finally:
                    conn.close()
                fate = proxy._fate(self.path)
                proxy._record(self.command, self.path, fate if fate != "ok" else str(status))
                if proxy.latency_s:
                    time.sleep(proxy.latency_s)
                if fate == "drop":
                    self._drop()
                    return
                if fate == "500":
                    data, status = b"proxy: injected failure after forwarding", 500
                    answer_headers = [("Content-Type", "text/plain")]
                self.send_response(status)
                for key, value in answer_headers:
                    if key.lower() not in HOP_HEADERS:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:  # the client gave up waiting (its timeout): nothing to tell it
                    self.close_connection = True

            def _drop(self):
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client that hung up: no traceback
                pass

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="test-proxy", daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _fate(self, path: str) -> str:
        with self._lock:
            if self.fail_next > 0 and path.split("?")[0].endswith(self.fail_path):
                self.fail_next -= 1
                return "500"
            draw = self.random.random()
            if draw < self.fail_rate:
                return "500"
            if draw < self.fail_rate + self.drop_rate:
                return "drop"
            return "ok"

    def _record(self, method: str, path: str, what: str) -> None:
        with self._lock:
            self.log.append((method, path.split("?")[0], what))

    def count(self, path_end: str = "", what: str | None = None) -> int:
        """Requests whose path ends with ``path_end`` (and the client got ``what``: "500", "drop", "200")."""
        with self._lock:
            return sum(1 for _m, p, w in self.log if p.endswith(path_end) and (what is None or w == what))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
