"""The controller's JSON API over its unix socket, with an engine on a fake flow table."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ovsmgr.controller import api as api_module
from ovsmgr.controller.api import MAX_BODY, NAME, ApiServer, path_name, routes
from ovsmgr.controller.client import ApiClient, ApiError, find_controller
from ovsmgr.controller.paths import ControllerPaths
from ovsmgr.controller.relay import UnixRelay
from ovsmgr.controller.runner import Controller
from ovsmgr.policy.model import Name
from ovsmgr.switch.plan import flow_line

from .test_controller_engine import make_engine


@pytest.fixture
def api(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine, table = make_engine(tmp_path)
    paths = ControllerPaths(tmp_path, "br0")
    endpoint = f"unix:{paths.api_socket}"
    server = ApiServer(endpoint, paths.ensure_token(), routes(engine, engine.describe))
    server.start()
    paths.write_info({"pid": 1, "api": endpoint})
    try:
        yield engine, table, paths
    finally:
        server.close()


def test_token_is_private_and_required(api) -> None:  # type: ignore[no-untyped-def]
    _, _, paths = api
    assert stat.S_IMODE(paths.token.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.api_socket.stat().st_mode) == 0o600
    with pytest.raises(ApiError) as info:
        ApiClient(f"unix:{paths.api_socket}", "wrong").call("GET", "/v1/status")
    assert info.value.status == 401


def test_changes_through_the_api_and_errors_as_4xx(api) -> None:  # type: ignore[no-untyped-def]
    _, table, paths = api
    client = ApiClient.for_paths(find_controller(paths.state_dir, None))
    result = client.call("POST", "/v1/sets/blocklist/add", {"addresses": ["192.0.2.9"]})
    assert result["changes"] == {"add": 1, "delete": 0, "change": 0}
    assert any("nw_src=192.0.2.9" in flow_line(mod) for mod in table.flows.values())
    for method, path, body, status in [
        ("POST", "/v1/sets/blocklist/add", {"addresses": ["not-an-address"]}, 400),
        ("POST", "/v1/sets/blocklist/add", {"addresses": []}, 400),
        ("POST", "/v1/sets/nosuch/add", {"addresses": ["192.0.2.1"]}, 404),
        ("POST", "/v1/rules", {"rule": {"name": "x", "from": "inside", "action": "drop", "bogus": 1}}, 400),
        ("DELETE", "/v1/rules/nosuch", None, 404),
        ("GET", "/v1/nothing", None, 404),
        ("GET", "/v1/reload", None, 405),
    ]:
        with pytest.raises(ApiError) as info:
            client.call(method, path, body)
        assert info.value.status == status, (path, info.value)
    client.call("POST", "/v1/rules/web/disable")
    status = client.call("GET", "/v1/status")
    assert status["runtime_changes"] == ["set blocklist + 192.0.2.9", "rule web disabled"]
    assert status["update_failures"] == 4  # the empty list is refused by the API layer itself
    assert client.call("GET", "/v1/sets/blocklist")["blocklist"]["members"] == ["203.0.113.0/24", "192.0.2.9"]


# --- requests the API refuses ----------------------------------------------------------------------

def raw(paths: ControllerPaths, data: bytes, timeout: float = 10, token: str | None = None,
        eof: bool = False) -> tuple[int, Any]:
    """Send `data` (with TOKEN replaced by the API token) as it is, and end it there if `eof`; the
    status and JSON answer, or (0, None) when the server closed without answering."""
    token = paths.token.read_text().strip() if token is None else token
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(paths.api_socket))
    answer = b""
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered before it was all sent
            sock.sendall(data.replace(b"TOKEN", token.encode()))
            if eof:
                sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:  # after the answer: the server closed with our request unread
        if not answer:
            raise
    finally:
        sock.close()
    if not answer:
        return 0, None
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """One request that asks the server to close the connection after answering it."""
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Authorization: Bearer TOKEN", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def test_the_token_is_checked_before_the_body_is_read(api) -> None:  # type: ignore[no-untyped-def]
    engine, _, paths = api
    # a promised body that never comes, or a Content-Length that is not even a number: 401 at once
    for length in ("100000", "abc"):
        started = time.monotonic()
        status, answer = raw(paths, request("POST", "/v1/sets/blocklist/add", {"Content-Length": length}),
                             token="wrong", timeout=3)
        assert status == 401 and "token" in answer["error"] and time.monotonic() - started < 2
    no_token = request("GET", "/v1/status", {}).replace(b"Authorization: Bearer TOKEN\r\n", b"")
    assert raw(paths, no_token)[0] == 401
    assert engine.changes.empty


@pytest.mark.parametrize(("headers", "status", "says"), [
    ({"Content-Length": "abc"}, 400, "not a non-negative integer"),
    ({"Content-Length": "-1"}, 400, "not a non-negative integer"),
    ({"Content-Length": "+2"}, 400, "not a non-negative integer"),
    ({"Content-Length": "1_0"}, 400, "not a non-negative integer"),
    ({"Content-Length": "\u00b2"}, 400, "not a non-negative integer"),  # superscript 2: isdigit(), not int()
    ({"Content-Length": " 2 "}, 400, "the body ended"),  # spaces around a length are fine, and 2 bytes are promised
    ({"Content-Length": "9" * 5000}, 413, "over"),  # int() refuses 5,000 digits: was a 500
    ({"Content-Length": str((1 << 20) + 1)}, 413, "over"),
    ({"Transfer-Encoding": "chunked"}, 411, "Content-Length"),
    ({"Transfer-Encoding": "chunked", "Content-Length": "2"}, 400, "ambiguous"),
])
def test_malformed_lengths_are_refused_before_anything_runs(api, headers, status, says) -> None:  # type: ignore[no-untyped-def]
    engine, _, paths = api
    generation = engine.status.generation
    sock_data = request("POST", "/v1/sets/blocklist/add", headers)
    got, answer = raw(paths, sock_data + b"{", timeout=5, eof=True)
    assert (got, says in answer["error"]) == (status, True), answer
    assert engine.changes.empty and engine.status.generation == generation


def test_conflicting_content_lengths_are_refused(api) -> None:  # type: ignore[no-untyped-def]
    _, _, paths = api
    data = request("POST", "/v1/reload", {}).replace(b"\r\n\r\n", b"\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n")
    status, answer = raw(paths, data + b"{}", timeout=5)
    assert status == 400 and "conflicting" in answer["error"]


@pytest.mark.parametrize(("body", "says"), [
    (b'{"addresses": ["192.0.2.1\xff"]}', "not UTF-8"),
    (b'{"addresses": NaN}', "NaN"),
    (b'{"addresses": Infinity}', "Infinity"),
    (b'{"addresses": -Infinity}', "Infinity"),
    (b'{"addresses": 1e999}', "out of range"),
    (b'{"addresses": 1' + b"0" * 5000 + b"}", "not JSON"),
    (b'{"addresses": ["192.0.2.1"], "addresses": ["192.0.2.2"]}', "duplicate key"),
    (b'{"x": ' + b"[" * 40 + b"]" * 40 + b', "addresses": ["192.0.2.1"]}', "nested"),
    (b"[" * 100_000 + b"]" * 100_000, "nested"),  # RecursionError in the parser: was a 500
    (b"\xef\xbb\xbf{}", "not JSON"),
    (b'["192.0.2.1"]', "JSON object"),
])
def test_bad_bodies_are_400_and_change_nothing(api, body: bytes, says: str) -> None:  # type: ignore[no-untyped-def]
    engine, _, paths = api
    data = request("POST", "/v1/sets/blocklist/add", {"Content-Length": str(len(body))}, body)
    status, answer = raw(paths, data)
    assert status == 400 and says in answer["error"], answer
    assert engine.changes.empty


@pytest.mark.parametrize(("path", "token", "status"), [
    ("/v1/sets/blocklist/add", "wrong", 401), ("/v1/sets/a%2Fb/add", None, 400), ("/v1/nothing", None, 404),
    ("/v1/status", None, 405),
])
def test_a_request_refused_on_its_headers_still_gets_its_answer(api, path: str, token: str | None,  # type: ignore[no-untyped-def]
                                                                 status: int) -> None:
    """Clients send the headers, then the body (http.client does, in two writes). The answer comes
    on the headers; the server then takes the rest unread, so the client's second write does not
    fail with a broken pipe and the client reads the answer."""
    _, _, paths = api
    body = json.dumps({"addresses": ["192.0.2.1"] * 1000}).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(paths.api_socket))
    real = paths.token.read_text().strip()
    head = request("POST", path, {"Content-Length": str(len(body))}).replace(b"TOKEN", (token or real).encode())
    try:
        sock.sendall(head)
        time.sleep(0.3)  # the server has answered and, before, closed
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    finally:
        sock.close()
    assert int(answer.split()[1]) == status and b'"error"' in answer


def test_an_oversized_body_is_refused_without_being_sent(api) -> None:  # type: ignore[no-untyped-def]
    """413 comes back on the headers alone: the server does not wait for (or read) the body."""
    _, _, paths = api
    started = time.monotonic()
    status, answer = raw(paths, request("POST", "/v1/sets/blocklist/add", {"Content-Length": str(MAX_BODY + 1)}),
                         timeout=5)
    assert status == 413 and "over" in answer["error"] and time.monotonic() - started < 2


def test_a_stalled_or_trickling_client_is_cut_off(api, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    engine, _, paths = api
    monkeypatch.setattr(api_module, "TIMEOUT", 1.0)
    # half a request line, then nothing
    started = time.monotonic()
    assert raw(paths, b"POST /v1/rel", timeout=8) == (0, None)
    assert time.monotonic() - started < 4
    # the headers, and 3 of the 40 bytes promised: 408
    started = time.monotonic()
    status, answer = raw(paths, request("POST", "/v1/sets/blocklist/add", {"Content-Length": "40"}, b'{"a'),
                         timeout=8)
    assert status == 408 and "did not arrive" in answer["error"]
    assert time.monotonic() - started < 4
    # a byte every 0.2 s keeps every single read short, but not the request: cut after TIMEOUT in all
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(8)
    sock.connect(str(paths.api_socket))
    started, closed = time.monotonic(), False
    try:
        for byte in request("GET", "/v1/status", {"X-Padding": "x" * 200}):
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
            if time.monotonic() - started > 6:
                break
    except OSError:  # EPIPE / ECONNRESET: the server hung up
        closed = True
    if not closed:
        closed = sock.recv(100) == b""
    sock.close()
    assert closed and time.monotonic() - started < 4
    assert engine.changes.empty


def test_too_many_connections_at_once_are_answered_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_module, "MAX_CONNECTIONS", 2)
    engine, _ = make_engine(tmp_path)
    paths = ControllerPaths(tmp_path, "br0")
    server = ApiServer(f"unix:{paths.api_socket}", paths.ensure_token(), routes(engine, engine.describe))
    server.start()
    idle = []
    try:
        for _ in range(2):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(paths.api_socket))
            idle.append(sock)
        time.sleep(0.2)
        status, answer = raw(paths, request("GET", "/v1/status", {}), timeout=5)
        assert status == 503 and "at once" in answer["error"]
        for sock in idle:
            sock.close()
        time.sleep(0.2)
        assert raw(paths, request("GET", "/v1/status", {}), timeout=5)[0] == 200
    finally:
        server.close()


def test_a_connection_is_kept_for_the_next_call_and_closed_when_idle(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_module, "TIMEOUT", 1.0)
    engine, _ = make_engine(tmp_path)
    paths = ControllerPaths(tmp_path, "br0")
    server = ApiServer(f"unix:{paths.api_socket}", paths.ensure_token(), routes(engine, engine.describe))
    server.start()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(str(paths.api_socket))
        keep = request("GET", "/v1/status", {}).replace(b"Connection: close\r\n", b"")
        keep = keep.replace(b"TOKEN", paths.token.read_text().strip().encode())
        reader = sock.makefile("rb")
        for _ in range(2):  # two calls, one connection
            sock.sendall(keep)
            head = b"".join(iter(reader.readline, b"\r\n"))
            assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head, head
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            assert json.loads(reader.read(length))["bridge"] == "br0"
        started = time.monotonic()
        assert reader.read(1) == b"", "an idle connection is closed after TIMEOUT"
        assert 0.5 < time.monotonic() - started < 3
        reader.close()
        sock.close()
    finally:
        server.close()


def test_server_errors_and_unknown_methods_answer_json(api) -> None:  # type: ignore[no-untyped-def]
    _, _, paths = api
    status, answer = raw(paths, request("PUT", "/v1/reload", {}))
    assert status == 501 and "PUT" in answer["error"]
    status, answer = raw(paths, b"GET /v1/status HTTP/1.1\r\n" + b"X-Long: " + b"x" * 70000 + b"\r\n\r\n")
    assert status == 431 and answer["error"]


# --- names in paths ------------------------------------------------------------------------------------

BAD_NAMES = ["..", ".", "%2e%2e", "a%2Fb", "%2F", "a%00b", "%00", "a%0Ab", "x" * 201, "x" * 64, "%ff",
             "a%252Fb", "bl%20ocklist", "-lead", "..%2F..%2Fetc%2Fpasswd", "%C3%A9"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_that_are_not_policy_names_are_refused_before_the_engine(api, name: str) -> None:  # type: ignore[no-untyped-def]
    engine, _, paths = api
    client = ApiClient.for_paths(find_controller(paths.state_dir, None))
    failures = engine.status.update_failures
    for method, path, body in [("GET", f"/v1/sets/{name}", None),
                               ("POST", f"/v1/sets/{name}/add", {"addresses": ["192.0.2.1"]}),
                               ("POST", f"/v1/sets/{name}/remove", {"addresses": ["192.0.2.1"]}),
                               ("DELETE", f"/v1/rules/{name}", None),
                               ("POST", f"/v1/rules/{name}/enable", None),
                               ("POST", f"/v1/rules/{name}/disable", None)]:
        with pytest.raises(ApiError) as info:
            client.call(method, path, body)
        assert info.value.status == 400 and "not a set or rule name" in str(info.value), (method, path)
    assert engine.status.update_failures == failures  # the engine never saw them
    assert engine.changes.empty


def test_names_are_percent_decoded_once(api) -> None:  # type: ignore[no-untyped-def]
    engine, _, paths = api
    client = ApiClient.for_paths(find_controller(paths.state_dir, None))
    assert list(client.call("GET", "/v1/sets/block%6Cist")) == ["blocklist"]
    client.call("POST", "/v1/rules/%77eb/disable")
    assert engine.changes.describe() == ["rule web disabled"]
    assert path_name("web") == "web"
    assert NAME.pattern == Name.__metadata__[0].metadata[0].pattern.strip("^$")


def test_placement_names_in_a_body_must_be_strings(api) -> None:  # type: ignore[no-untyped-def]
    _, _, paths = api
    client = ApiClient.for_paths(find_controller(paths.state_dir, None))
    rule = {"name": "extra", "from": "inside", "services": ["tcp/8080"], "action": "allow"}
    with pytest.raises(ApiError) as info:
        client.call("POST", "/v1/rules", {"rule": rule, "before": ["web"]})  # was a 500 (unhashable list)
    assert info.value.status == 400


# --- where the API listens -------------------------------------------------------------------------------

def _free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_tcp_api_binds_exactly_the_configured_loopback_address(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path)
    paths = ControllerPaths(tmp_path, "br0")
    token = paths.ensure_token()
    port = _free_tcp_port()
    server = ApiServer(f"127.0.0.1:{port}", token, routes(engine, engine.describe))
    server.start()
    try:
        assert ApiClient(f"127.0.0.1:{port}", token, timeout=5).call("GET", "/v1/status")["bridge"] == "br0"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=2).close()
    finally:
        server.close()
    for endpoint, says in [("0.0.0.0:8181", "loopback only"), ("192.0.2.1:8181", "loopback only"),
                           ("[::]:8181", "loopback only"), ("localhost:8181", "loopback HOST:PORT"),
                           ("127.0.0.1:http", "loopback HOST:PORT"), ("127.0.0.1:70000", "no port")]:
        with pytest.raises(ValueError, match=says):
            ApiServer(endpoint, token, [])


def test_tcp_api_on_ipv6_loopback(tmp_path: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no ::1 here: {exc}")
    engine, _ = make_engine(tmp_path)
    token = ControllerPaths(tmp_path, "br0").ensure_token()
    server = ApiServer("[::1]:0", token, routes(engine, engine.describe))  # was AF_INET: could not bind
    server.start()
    try:
        port = server.address[1]
        assert ApiClient(f"[::1]:{port}", token, timeout=5).call("GET", "/v1/status")["bridge"] == "br0"
    finally:
        server.close()


# --- the API writes its state files and nothing else ---------------------------------------------------------

def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = ("link", os.readlink(path))
        elif path.is_file():
            out[key] = ("file", path.read_bytes().decode(errors="replace"))
        else:
            out[key] = ("other", "")
    return out


def test_the_api_cannot_be_made_to_write_outside_its_state_files(tmp_path: Path) -> None:
    """Links planted at every temporary name the old writers used, hostile names in paths and
    bodies: afterwards only the controller's own state files are new or changed, and every planted
    link and its target are as they were."""
    state, outside = tmp_path / "state", tmp_path / "outside"
    state.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("keep")
    for old_tmp in ("ovsmgr-br0.tmp", "ovsmgr-br0.runtime.tmp", "ovsmgr-br0.controller.tmp"):
        (state / old_tmp).symlink_to(outside / "victim")
    (state / "passwd").symlink_to(outside / "victim")
    engine, _ = make_engine(state)
    before = snapshot(tmp_path)
    paths = ControllerPaths(state, "br0")
    endpoint = f"unix:{paths.api_socket}"
    server = ApiServer(endpoint, paths.ensure_token(), routes(engine, engine.describe))
    server.start()
    paths.write_info({"pid": 1, "api": endpoint})
    assert (outside / "victim").read_text() == "keep"  # the old token and info writers wrote it
    try:
        client = ApiClient.for_paths(find_controller(state, None))
        for name in ["..%2F..%2Foutside%2Fvictim", "..", "%2e%2e%2fpasswd", "passwd%00", "a%2F..%2F..%2Fx"]:
            for method, path, body in [("POST", f"/v1/sets/{name}/add", {"addresses": ["192.0.2.1"]}),
                                       ("DELETE", f"/v1/rules/{name}", None),
                                       ("POST", f"/v1/rules/{name}/disable", None)]:
                with pytest.raises(ApiError):
                    client.call(method, path, body)
        for rule_name in ["../../outside/victim", "/etc/passwd", "a\x00b", "x" * 300]:
            with pytest.raises(ApiError) as info:
                client.call("POST", "/v1/rules", {"rule": {"name": rule_name, "from": "inside", "action": "drop"}})
            assert info.value.status == 400
        client.call("POST", "/v1/sets/blocklist/add", {"addresses": ["192.0.2.9"]})
        client.call("POST", "/v1/rules", {"rule": {"name": "extra", "from": "inside", "services": ["tcp/8080"],
                                                   "action": "allow"}, "after": "web"})
        client.call("POST", "/v1/rules/web/disable")
        client.call("DELETE", "/v1/rules/extra")
        client.call("POST", "/v1/reload")
    finally:
        server.close()
    after = snapshot(tmp_path)
    assert (outside / "victim").read_text() == "keep"
    written = {k for k in set(after) | set(before) if after.get(k) != before.get(k)}
    assert written == {"state/ovsmgr-br0.runtime.json", "state/ovsmgr-br0.token", "state/ovsmgr-br0.controller.json"}
    assert all(after[k][0] == "file" for k in written)
    assert stat.S_IMODE((state / "ovsmgr-br0.token").stat().st_mode) == 0o600


# --- OpenFlow: behind the relay, only the relay's connections are switches ------------------------------------

class _Hooks:
    def __init__(self, relay: UnixRelay | None, tls_listener: bool = False) -> None:
        self.relay = relay
        self.tls_listener = tls_listener
        self.events: list[tuple[str, Any]] = []

    def attach(self, app: Any) -> None: ...

    def switch_allowed(self, address: Any) -> bool:
        return Controller.switch_allowed(self, address)  # type: ignore[arg-type]

    def switch_state(self, dpid: int, channel: object | None) -> None:
        self.events.append(("state", (dpid, channel is not None)))

    def packet_in(self, dpid: int, userdata: bytes | None, metadata: bytes | None, frame: bytes) -> None:
        self.events.append(("packet_in", frame))

    def flow_stats(self, dpid: int, totals: dict[int, list[int]]) -> None: ...


class _FakeDatapath:
    """What the os-ken app sees of a connection: its peer address, socket and id."""

    def __init__(self, sock: socket.socket, address: Any) -> None:
        self.socket, self.address, self.id, self.closed = sock, address, None, False
        self.sent: list[Any] = []
        self.ofproto_parser = SimpleNamespace(NXTSetPacketInFormatMsg=lambda dp, fmt: ("format", fmt))

    def close(self) -> None:
        self.closed = True
        self.socket.shutdown(socket.SHUT_WR)

    def send_msg(self, msg: Any) -> None:
        self.sent.append(msg)


def test_only_connections_through_the_relay_are_taken_as_switches(tmp_path: Path) -> None:
    from os_ken.controller.handler import HANDSHAKE_DISPATCHER, MAIN_DISPATCHER

    from ovsmgr.controller.app import OvsmgrApp

    osken = socket.create_server(("127.0.0.1", 0))  # stands in for os-ken's internal port
    osken.settimeout(5)
    relay = UnixRelay(tmp_path / "of.sock", osken.getsockname()[1])
    relay.start()
    hooks = _Hooks(relay)
    app = OvsmgrApp(ovsmgr_hooks=hooks)
    try:
        switch = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        switch.settimeout(5)
        switch.connect(str(tmp_path / "of.sock"))
        relayed = _FakeDatapath(*osken.accept())
        intruder = socket.create_connection(osken.getsockname()[:2], timeout=5)
        direct = _FakeDatapath(*osken.accept())
        assert relay.is_relayed(relayed.address) and not relay.is_relayed(direct.address)

        for dp in (relayed, direct):
            app._state_change(SimpleNamespace(datapath=dp, state=HANDSHAKE_DISPATCHER))
        assert direct.closed and not relayed.closed
        assert intruder.recv(100) == b""  # the intruder's connection is closed
        # had it got further, it is still not a switch, and what it sends is ignored
        direct.id = relayed.id = 0x42
        app._state_change(SimpleNamespace(datapath=direct, state=MAIN_DISPATCHER))
        assert hooks.events == [] and app.datapaths == {}
        app._state_change(SimpleNamespace(datapath=relayed, state=MAIN_DISPATCHER))
        assert hooks.events == [("state", (0x42, True))] and app.datapaths == {0x42: relayed}
        message = SimpleNamespace(datapath=direct, userdata=None, metadata=None, data=b"frame")
        app._packet_in(SimpleNamespace(msg=message))
        assert hooks.events == [("state", (0x42, True))]
        # the relayed connection carries bytes both ways
        switch.sendall(b"hello")
        assert relayed.socket.recv(100) == b"hello"
        relayed.socket.sendall(b"world")
        assert switch.recv(100) == b"world"
        switch.close()
        assert relayed.socket.recv(100) == b""
        deadline = time.monotonic() + 5
        while relay.is_relayed(relayed.address) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not relay.is_relayed(relayed.address)  # a closed relay connection's port is no longer a switch
        intruder.close()
    finally:
        relay.close()
        osken.close()
    plain = Controller.__new__(Controller)
    plain.relay = None
    assert plain.switch_allowed(("192.0.2.1", 40000))  # a tcp: listen target takes any switch


def test_refused_handshakes_are_logged_at_a_bounded_rate(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from ovsmgr.controller import runner
    from ovsmgr.controller.packetin import TokenBucket

    now = [0.0]
    monkeypatch.setattr(runner, "_REFUSALS", TokenBucket(1.0, 10, clock=lambda: now[0]))
    for i in range(25):
        runner._handshake_refused(f"192.0.2.9:{40000 + i}", "certificate verify failed")
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 10 and all("certificate verify failed" in line for line in lines)
    now[0] = 1.0
    runner._handshake_refused("192.0.2.9:50000", "certificate verify failed")
    last = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()][-1]
    assert "192.0.2.9:50000" in last and "(15 more refused and not logged since the last line)" in last


def test_a_tls_listener_takes_no_connection_without_a_verified_certificate() -> None:
    """os-ken's own TCP listener stays open beside the TLS one: nothing that is not TLS with a
    certificate the CA verified is a switch (os-ken's handshake already refuses the others)."""
    from os_ken.controller.handler import HANDSHAKE_DISPATCHER, MAIN_DISPATCHER

    from ovsmgr.controller.app import OvsmgrApp

    hooks = _Hooks(None, tls_listener=True)
    app = OvsmgrApp(ovsmgr_hooks=hooks)
    server = socket.create_server(("127.0.0.1", 0))
    try:
        plain = socket.create_connection(server.getsockname()[:2], timeout=5)
        dp = _FakeDatapath(*server.accept())
        app._state_change(SimpleNamespace(datapath=dp, state=HANDSHAKE_DISPATCHER))
        assert dp.closed and plain.recv(100) == b""
        dp.id = 0x42
        app._state_change(SimpleNamespace(datapath=dp, state=MAIN_DISPATCHER))
        assert hooks.events == [] and app.datapaths == {}
        plain.close()
    finally:
        server.close()
    # the same connection on a plain listener is a switch
    plain_hooks = _Hooks(None)
    app = OvsmgrApp(ovsmgr_hooks=plain_hooks)
    server = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(server.getsockname()[:2], timeout=5)
        dp = _FakeDatapath(*server.accept())
        dp.id = 0x42
        app._state_change(SimpleNamespace(datapath=dp, state=MAIN_DISPATCHER))
        assert not dp.closed and plain_hooks.events == [("state", (0x42, True))]
        client.close()
    finally:
        server.close()


def test_a_fleet_controller_gives_an_unknown_datapath_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A connection whose datapath id is no switch of the fleet reaches no switch's worker (so nothing is
    written to it) and is logged; once a switch's datapath id is read from its OVSDB, it is that switch's."""
    from ovsmgr.fleet.controller import FleetController, FleetOptions
    from ovsmgr.fleet.fleetfile import Fleet

    class Switch:
        def __init__(self) -> None:
            self.name, self.got = "edge-2", []

        def switch_state(self, dpid: int, channel: object | None) -> None:
            self.got.append((dpid, channel))

    ctl = FleetController(FleetOptions(Fleet(str(tmp_path / "fleet.yaml"), {})))
    known, later = Switch(), Switch()
    ctl.by_dpid[0x1] = known  # type: ignore[assignment]
    channel = object()
    ctl.switch_state(0x1, channel)  # type: ignore[arg-type]
    assert known.got == [(0x1, channel)]
    with caplog.at_level("WARNING", logger="ovsmgr.controller"):
        ctl.switch_state(0x2, channel)  # type: ignore[arg-type]
    assert "0x0000000000000002 is no switch of" in caplog.text and "nothing is written" in caplog.text
    assert later.got == [] and ctl.packet_in(0x2, None, None, b"frame") is None
    ctl.known(later, 0x2)  # type: ignore[arg-type]
    assert later.got == [(0x2, channel)] and ctl.unknown == {}


@pytest.mark.parametrize(("listen", "tls", "error"), [
    (("ssl:0.0.0.0:6653",), False, "--listen ssl:0.0.0.0:6653 needs the fleet file's tls:"),
    (("ssl:0.0.0.0:6653", "unix:/run/a.sock"), True, "unix:PATH listeners, or one tcp:HOST:PORT or ssl:HOST:PORT"),
    (("ssl:0.0.0.0:6653", "tcp:127.0.0.1:6653"), True, "one tcp:HOST:PORT or ssl:HOST:PORT, or unix:PATH ones"),
    (("ssl:0.0.0.0",), True, "--listen ssl:0.0.0.0: not tcp:HOST:PORT, ssl:HOST:PORT or unix:PATH"),
    (("ssl:0.0.0.0:6653",), True, None),
    (("unix:/run/a.sock", "unix:/run/b.sock"), False, None),
])
def test_a_fleet_controller_checks_its_listeners_before_it_starts(
        tmp_path: Path, listen: tuple[str, ...], tls: bool, error: str | None) -> None:
    from ovsmgr.fleet.controller import FleetController, FleetOptions
    from ovsmgr.fleet.fleetfile import Fleet
    from ovsmgr.fleet.targets import FleetError
    from ovsmgr.southbound.tls import TlsFiles

    files = TlsFiles(tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / "ca.pem") if tls else None
    ctl = FleetController(FleetOptions(Fleet(str(tmp_path / "fleet.yaml"), {}, tls=files), listen))
    if error is None:
        ctl._check_listen()
    else:
        with pytest.raises(FleetError, match=re.escape(error)):
            ctl._check_listen()


def test_one_bridge_controller_refuses_a_tls_listener_it_has_no_files_for(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ovsmgr.cli import main

    for listen, error in (("ssl:0.0.0.0:6653", "--listen ssl:0.0.0.0:6653: a TLS listener takes its key, certificate "
                                               "and CA from a fleet file's tls:"),
                          ("tcp:127.0.0.1", "--listen tcp:127.0.0.1: not tcp:HOST:PORT, ssl:HOST:PORT or unix:PATH")):
        result = CliRunner().invoke(main, ["controller", str(tmp_path / "policy.yaml"), "--listen", listen,
                                           "--db", "unix:/nonexistent"], env={"OVSMGR_STATE_DIR": str(tmp_path)})
        assert result.exit_code == 1 and error in result.output, result.output
    assert not list(tmp_path.iterdir()), "nothing started, nothing written"
