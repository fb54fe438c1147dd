"""The controller's JSON API over its unix socket, with an engine on a fake flow table."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ovsmgr.controller.api import ApiServer, routes
from ovsmgr.controller.client import ApiClient, ApiError, find_controller
from ovsmgr.controller.paths import ControllerPaths

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
    assert any("192.0.2.9" in e.match for e in table.flows.values())
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
