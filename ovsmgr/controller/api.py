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

What a request must look like (anything else is refused with a JSON
`{"error": ...}` and changes nothing):

- the token is checked first, from the headers alone: without it the answer is
  401 and the body is never read;
- a body has a `Content-Length` of at most `MAX_BODY` bytes: a length that is
  not a plain non-negative integer, or conflicting lengths, answer 400; more
  than `MAX_BODY` answers 413 before a byte of the body is read;
  `Transfer-Encoding` (chunked) is not supported: 411 (400 with a length too).
  After an answer on the headers alone, whatever body the client still sends
  is taken and thrown away, unparsed (at most `MAX_BODY` bytes, `LINGER`
  seconds), so that it sees the answer rather than a broken pipe;
- the body is a JSON object in UTF-8, at most `MAX_DEPTH` levels deep, without
  `NaN`/`Infinity`, numbers out of range or duplicate keys (400);
- the whole request arrives within `TIMEOUT` seconds, or the connection is
  closed (408 if the client still listens): a stalled or trickling client does
  not hold a thread; at most `MAX_CONNECTIONS` are served at once (503 beyond);
- a name in the path (`/v1/sets/NAME`, `/v1/rules/NAME`) is percent-decoded
  once, after routing, and must be a policy name (`ovsmgr.policy.model.Name`:
  `[A-Za-z_][A-Za-z0-9_.-]{0,62}`): `/`, `..`, NUL, control characters and
  long names answer 400 before the engine sees them. Names never become file
  names: the only files the controller writes are its fixed state files
  (`ovsmgr.controller.paths`), through `ovsmgr.switch.statefile.atomic_write`.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import ipaddress
import json
import logging
import math
import os
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

from ovsmgr.controller.engine import Engine
from ovsmgr.controller.runtime import ChangeError
from ovsmgr.policy import PolicyError

log = logging.getLogger("ovsmgr.controller.api")
MAX_BODY = 1 << 20
"""Bytes of a request body; a runtime change is a few hundred."""
MAX_DEPTH = 32
"""Levels of JSON nesting in a body; a rule needs four."""
TIMEOUT = 10.0
"""Seconds a client has to send its whole request (and the socket timeout for the answer)."""
LINGER = 1.0
"""Seconds to let a client finish sending a body that was refused unread (see `_linger`)."""
MAX_CONNECTIONS = 32
"""Requests served at once; more connections are answered 503 and closed."""
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
"""A set or rule name in a path: the policy language's `Name` (ovsmgr/policy/model.py)."""
Route = tuple[str, re.Pattern[str], Callable[..., Any]]


class RequestError(Exception):
    """A request refused before it reaches the engine; `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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
        for key in ("before", "after"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ChangeError(f'"{key}" is the name of a firewall rule')
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


def path_name(raw: str) -> str:
    """A name from a path segment: percent-decoded once, then it must be a policy name."""
    try:
        name = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        name = ""
    if not NAME.fullmatch(name):
        shown = raw if len(raw) <= 64 else raw[:64] + "..."
        raise RequestError(f"{shown!r} is not a set or rule name (letters, digits, _ . -; at most 63, "
                           "starting with a letter or _)")
    return name


def parse_body(data: bytes) -> dict[str, Any]:
    """A request body: a JSON object in UTF-8, not too deep, finite numbers, no duplicate keys."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"the body is not UTF-8: {exc}") from exc
    try:
        body = json.loads(text, parse_constant=_no_constant, parse_float=_finite, object_pairs_hook=_unique)
    except RecursionError:
        raise RequestError(f"the body is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, and ours
        raise RequestError(f"the body is not JSON: {exc}") from exc
    if _depth(body) > MAX_DEPTH:
        raise RequestError(f"the body is nested more than {MAX_DEPTH} levels deep")
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _depth(value: Any) -> int:
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                todo += [(v, level + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


class _DeadlineReader(io.RawIOBase):
    """The request's bytes, each read bounded by what is left of one deadline for the whole
    request: a client sending a byte every few seconds does not keep its thread."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.sock = sock
        self.deadline = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server_version = "ovsmgr-controller"
    protocol_version = "HTTP/1.1"
    """Connections are kept for the next request (a client that calls often does not pay for a
    connection, and the controller for a thread, per call); each request, and the wait for it,
    has the same TIMEOUT, after which the connection is closed."""
    token: str = ""
    table: ClassVar[list[Route]] = []
    _unread = False
    """The request has a body that is not read (yet)."""

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(TIMEOUT)
        self.rfile.close()  # the plain reader: replaced by one with a deadline for the whole request
        self.reader = _DeadlineReader(self.connection, TIMEOUT)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        """One request of the connection, within TIMEOUT of the end of the one before."""
        self.reader.deadline = time.monotonic() + TIMEOUT
        try:
            super().handle_one_request()
        except TimeoutError:  # waiting for the next request (or a slow one): the connection ends
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api: " + format, *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The server's own refusals (bad request line, header too long, unknown method), as JSON."""
        self.close_connection = True
        self._answer(code, {"error": message or self.responses.get(code, ("refused",))[0]})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        self._unread = bool(self.headers.get("Content-Length", "").strip() not in ("", "0")
                            or self.headers.get("Transfer-Encoding"))
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            self._answer(401, {"error": "a valid token is needed (Authorization: Bearer TOKEN)"})
            self._linger()
            return
        try:
            handler, args = self._route(method)
            body = self._body()
            status, result = 200, handler(body, **args)
        except RequestError as exc:
            status, result = exc.status, {"error": str(exc)}
        except ChangeError as exc:
            status, result = exc.status, {"error": str(exc), "diagnostics": exc.diagnostics}
        except PolicyError as exc:
            status, result = 400, {"error": "the policy files do not validate",
                                   "diagnostics": [str(d) for d in exc.diagnostics]}
        except Exception as exc:  # the API answers every failure; the controller keeps running
            log.exception("api: %s %s failed", method, self.path)
            status, result = 500, {"error": f"{type(exc).__name__}: {exc}"}
        self._answer(status, result)
        self._linger()

    def _route(self, method: str) -> tuple[Callable[..., Any], dict[str, str]]:
        path = self.path.split("?", 1)[0]
        known = False
        for verb, pattern, handler in self.table:
            found = pattern.fullmatch(path)
            if found:
                known = True
                if verb == method:
                    return handler, {k: path_name(v) for k, v in found.groupdict().items()}
        if known:
            raise RequestError(f"{method} not allowed on {path}", 405)
        raise RequestError(f"no {path}", 404)

    def _length(self) -> int:
        lengths = [v.strip() for v in self.headers.get_all("Content-Length") or []]
        if self.headers.get_all("Transfer-Encoding"):
            if lengths:
                raise RequestError("Transfer-Encoding and Content-Length together are ambiguous; "
                                   "send Content-Length only")
            raise RequestError("send the body with a Content-Length (Transfer-Encoding is not supported)", 411)
        if not lengths:
            return 0
        if len(set(lengths)) > 1:
            raise RequestError(f"conflicting Content-Length headers: {', '.join(lengths)[:80]}")
        text = lengths[0]
        if not (text.isascii() and text.isdigit()):
            raise RequestError(f"Content-Length {text[:40]!r} is not a non-negative integer")
        if len(text) > 12 or int(text) > MAX_BODY:
            raise RequestError(f"the body is over {MAX_BODY} bytes (Content-Length {text[:40]})", 413)
        return int(text)

    def _body(self) -> dict[str, Any]:
        length = self._length()
        self._unread = False
        if not length:
            return {}
        try:
            data = self.rfile.read(length)
        except OSError as exc:  # TimeoutError: a stalled client
            self.close_connection = True
            raise RequestError(f"the body did not arrive within {TIMEOUT:g} s: {exc}", 408) from exc
        if len(data) < length:
            self.close_connection = True
            raise RequestError(f"the body ended after {len(data)} of {length} bytes")
        return parse_body(data)

    def _linger(self) -> None:
        """After answering a request whose body was never read (refused on its headers): end our
        side, then take what the client still sends, unread and unkept (at most MAX_BODY bytes, for
        at most LINGER seconds), so that it reads the answer instead of failing on a broken pipe."""
        if not self._unread:
            return
        self._unread = False
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            deadline, left = time.monotonic() + LINGER, MAX_BODY
            while left > 0 and (wait := deadline - time.monotonic()) > 0:
                self.connection.settimeout(wait)
                data = self.connection.recv(min(left, 65536))
                if not data:
                    break
                left -= len(data)

    def _answer(self, status: int, value: Any) -> None:
        """The answer; a refusal also ends the connection (only answered calls keep it)."""
        if status >= 300:
            self.close_connection = True
        data = json.dumps(value).encode()
        with contextlib.suppress(OSError):  # a client that left, or stopped reading
            self.connection.settimeout(TIMEOUT)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)


_BUSY_BODY = json.dumps({"error": f"more than {MAX_CONNECTIONS} API requests at once; try again"}).encode()
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class _Bounded(socketserver.ThreadingMixIn):
    """At most MAX_CONNECTIONS requests at once; beyond that, 503 and the connection is closed."""

    daemon_threads = True
    request_queue_size = 128
    """Listen backlog: callers that arrive together wait to be accepted (the default 5 refused
    them at once, EAGAIN on a unix socket), and the MAX_CONNECTIONS bound still holds."""

    def server_activate(self) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().server_activate()  # type: ignore[misc]

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            log.warning("api: %d requests at once, refusing another", MAX_CONNECTIONS)
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(_BUSY)
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _TCPServer(_Bounded, ThreadingHTTPServer):
    pass


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class _UnixHTTPServer(_Bounded, socketserver.UnixStreamServer):
    def get_request(self) -> tuple[Any, Any]:
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)


def tcp_endpoint(endpoint: str) -> tuple[str, int]:
    """`HOST:PORT` or `[HOST]:PORT` with a loopback address; a clear error for anything else."""
    host, _, port = endpoint.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"the API listens on unix:PATH or a loopback HOST:PORT (127.0.0.1:8181, [::1]:8181), "
                         f"not {endpoint!r}") from None
    if not address.is_loopback:
        raise ValueError(f"the API listens on loopback only, not {host}")
    if not 0 <= number <= 65535:
        raise ValueError(f"no port {number}")
    return host, number


class ApiServer:
    """`unix:PATH` or `HOST:PORT` (loopback only), bound to exactly that address."""

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
            host, port = tcp_endpoint(endpoint)
            server_class = _TCP6Server if ":" in host else _TCPServer
            self.server = server_class((host, port), handler)
        self._thread = threading.Thread(target=self.server.serve_forever, name="ovsmgr-api", daemon=True)

    @property
    def address(self) -> Any:
        """Where the server listens (`(host, port)`, or the socket path)."""
        return self.server.server_address

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.endpoint.startswith("unix:"):
            with contextlib.suppress(OSError):
                Path(self.endpoint.removeprefix("unix:")).unlink()
