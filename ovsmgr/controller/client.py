"""The CLI's side of the controller API: find the running controller, call it with its token."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from ovsmgr.controller.paths import ControllerPaths, controllers_in
from ovsmgr.switch.statefile import read_private


class ApiError(Exception):
    def __init__(self, message: str, status: int = 0, diagnostics: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.diagnostics = diagnostics or []


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def find_controller(state_dir: Path, bridge: str | None) -> ControllerPaths:
    """The controller of `bridge`, or the only one in `state_dir`."""
    if bridge is None:
        running = controllers_in(state_dir)
        if len(running) != 1:
            found = ", ".join(running) or "none"
            raise ApiError(f"give --bridge: controllers in {state_dir}: {found}")
        bridge = running[0]
    paths = ControllerPaths(state_dir, bridge)
    if paths.read_info() is None:
        raise ApiError(f"no controller runs for {bridge} (no {paths.info})")
    return paths


class ApiClient:
    """Calls to one controller over one kept connection (made again when the controller closed it);
    one client per thread."""

    def __init__(self, endpoint: str, token: str, timeout: float = 120) -> None:
        self.endpoint = endpoint
        self.token = token
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    @staticmethod
    def for_paths(paths: ControllerPaths) -> ApiClient:
        info = paths.read_info() or {}
        try:
            text = read_private(paths.token)
        except OSError as exc:
            raise ApiError(f"cannot read the API token {paths.token}: {exc}") from exc
        if not text or not text.strip():  # missing, a link, not private, or empty: not a token
            raise ApiError(f"no usable API token in {paths.token} (it must be a regular file only "
                           "its owner can read; is the controller running?)")
        return ApiClient(str(info["api"]), text.strip())

    def _exchange(self, method: str, path: str, data: bytes | None,
                  headers: dict[str, str]) -> tuple[http.client.HTTPResponse, Any]:
        """One request over the kept connection; once more over a new one if the kept one had been
        closed by the controller (idle too long) before this request reached it."""
        for attempt in (1, 2):
            fresh = self._conn is None
            conn = self._conn = self._conn or self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                payload = json.loads(response.read() or b"null")
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest) as exc:
                self.close()
                if fresh or attempt == 2:
                    raise exc
                continue
            except BaseException:
                self.close()
                raise
            if response.will_close:
                self.close()
            return response, payload
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.endpoint.startswith("unix:"):
            return _UnixConnection(self.endpoint.removeprefix("unix:"), self.timeout)
        host, _, port = self.endpoint.rpartition(":")
        return http.client.HTTPConnection(host.strip("[]"), int(port), timeout=self.timeout)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        try:
            response, payload = self._exchange(method, path, data, headers)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise ApiError(f"the controller API at {self.endpoint} did not answer: {exc}") from exc
        if response.status >= 300:
            raise ApiError(str(payload.get("error")), response.status, payload.get("diagnostics"))
        return payload
