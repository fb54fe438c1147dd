"""The controller's local JSON API: runtime changes, reload, status.

Served on a unix socket (mode 0600, in the state directory) or on a loopback
TCP port, and every request must carry the token from `ovsmgr-BRIDGE.token`
(`Authorization: Bearer TOKEN`). Handlers only translate HTTP to `Engine`
calls and `ChangeError`s to status codes: a refused change answers 4xx with
the reasons and changes nothing.

    GET    /v1/status                      what runs, generation, runtime changes
    GET    /v1/sets[/NAME]                 address sets (effective members, runtime delta)
    POST   /v1/sets/NAME/add               {"addresses": ["203.0.113.9", ...]}
    POST   /v1/sets/NAME/remove            {"addresses": [...]}
    POST   /v1/rules                       {"rule": {...firewall rule...}, "before": NAME | "after": NAME}
    DELETE /v1/rules/NAME
    POST   /v1/rules/NAME/enable | /disable
    POST   /v1/reload                      recompile from the files
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import os
import re
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from ovsmgr.controller.engine import Engine
from ovsmgr.controller.runtime import ChangeError
from ovsmgr.policy import PolicyError

log = logging.getLogger("ovsmgr.controller.api")
MAX_BODY = 1 << 20
Route = tuple[str, re.Pattern[str], Callable[..., Any]]


def routes(engine: Engine, describe: Callable[[], dict[str, Any]]) -> list[Route]:
    def members(name: str, body: dict[str, Any], add: bool) -> Any:
        addresses = body.get("addresses")
        if not isinstance(addresses, list) or not addresses or not all(isinstance(a, str) for a in addresses):
            raise ChangeError('give "addresses": a non-empty list of addresses or prefixes')
        result = engine.set_members(name, addresses if add else [], [] if add else addresses)
        return result.to_json()

    def add_rule(body: dict[str, Any]) -> Any:
        rule = body.get("rule")
        if not isinstance(rule, dict):
            raise ChangeError('give "rule": a firewall rule as in the policy files')
        return engine.add_rule(rule, body.get("before"), body.get("after")).to_json()

    return [
        ("GET", re.compile(r"/v1/status"), lambda body: describe()),
        ("GET", re.compile(r"/v1/sets"), lambda body: engine.set_list(None)),
        ("GET", re.compile(r"/v1/sets/(?P<name>[^/]+)"), lambda body, name: engine.set_list(name)),
        ("POST", re.compile(r"/v1/sets/(?P<name>[^/]+)/add"), lambda body, name: members(name, body, True)),
        ("POST", re.compile(r"/v1/sets/(?P<name>[^/]+)/remove"), lambda body, name: members(name, body, False)),
        ("POST", re.compile(r"/v1/rules"), add_rule),
        ("DELETE", re.compile(r"/v1/rules/(?P<name>[^/]+)"), lambda body, name: engine.remove_rule(name).to_json()),
        ("POST", re.compile(r"/v1/rules/(?P<name>[^/]+)/enable"),
         lambda body, name: engine.set_rule_enabled(name, True).to_json()),
        ("POST", re.compile(r"/v1/rules/(?P<name>[^/]+)/disable"),
         lambda body, name: engine.set_rule_enabled(name, False).to_json()),
        ("POST", re.compile(r"/v1/reload"), lambda body: engine.reload().to_json()),
    ]


class _Handler(BaseHTTPRequestHandler):
    server_version = "ovsmgr-controller"
    token: str = ""
    table: ClassVar[list[Route]] = []

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            self._answer(401, {"error": "a valid token is needed (Authorization: Bearer TOKEN)"})
            return
        try:
            body = self._body()
            status, result = self._route(method, body)
        except ChangeError as exc:
            status, result = exc.status, {"error": str(exc), "diagnostics": exc.diagnostics}
        except PolicyError as exc:
            status, result = 400, {"error": "the policy files do not validate",
                                   "diagnostics": [str(d) for d in exc.diagnostics]}
        except Exception as exc:  # the API answers every failure; the controller keeps running
            log.exception("api: %s %s failed", method, self.path)
            status, result = 500, {"error": f"{type(exc).__name__}: {exc}"}
        self._answer(status, result)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ChangeError("request body too large", 413)
        if not length:
            return {}
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError as exc:
            raise ChangeError(f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ChangeError("the body must be a JSON object")
        return body

    def _route(self, method: str, body: dict[str, Any]) -> tuple[int, Any]:
        path = self.path.split("?", 1)[0]
        known = False
        for verb, pattern, handler in self.table:
            found = pattern.fullmatch(path)
            if found:
                known = True
                if verb == method:
                    return 200, handler(body, **found.groupdict())
        return (405, {"error": f"{method} not allowed on {path}"}) if known else (404, {"error": f"no {path}"})

    def _answer(self, status: int, value: Any) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[Any, Any]:
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)


class ApiServer:
    """`unix:PATH` or `HOST:PORT` (loopback only)."""

    def __init__(self, endpoint: str, token: str, table: list[Route]) -> None:
        handler = type("Handler", (_Handler,), {"token": token, "table": table})
        self.endpoint = endpoint
        self.server: socketserver.BaseServer
        if endpoint.startswith("unix:"):
            path = Path(endpoint.removeprefix("unix:"))
            path.unlink(missing_ok=True)
            old = os.umask(0o077)
            try:
                self.server = _UnixHTTPServer(str(path), handler)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
        else:
            host, _, port = endpoint.rpartition(":")
            if not ipaddress.ip_address(host.strip("[]")).is_loopback:
                raise ValueError(f"the API listens on loopback only, not {host}")
            self.server = ThreadingHTTPServer((host.strip("[]"), int(port)), handler)
        self._thread = threading.Thread(target=self.server.serve_forever, name="ovsmgr-api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.endpoint.startswith("unix:"):
            with contextlib.suppress(OSError):
                Path(self.endpoint.removeprefix("unix:")).unlink()
