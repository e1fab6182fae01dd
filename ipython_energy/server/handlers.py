"""Authenticated API handlers for the sidebar (skeleton, filled in below)."""

from __future__ import annotations

import json

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join


class PingHandler(APIHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        self.finish(json.dumps({"ok": True}))


def setup_handlers(serverapp) -> None:
    web_app = serverapp.web_app
    base = url_path_join(web_app.settings["base_url"], "ipython-energy", "api")
    web_app.add_handlers(".*$", [(url_path_join(base, "ping"), PingHandler)])
