"""Where controller mode keeps its files: all in the target's state directory, per bridge.

- `ovsmgr-BRIDGE.json`: what is applied (the same record `apply` writes; `status` reads it);
- `ovsmgr-BRIDGE.runtime.json`: the runtime changes (see `runtime`);
- `ovsmgr-BRIDGE.controller.json`: the running controller (pid, API and OpenFlow endpoints);
- `ovsmgr-BRIDGE.token`: the API token, mode 0600 (root only), read by the CLI;
- `ovsmgr-BRIDGE.api.sock`: the API's unix socket, mode 0600, unless `--api HOST:PORT`;
- `ovsmgr-BRIDGE.of.sock`: the OpenFlow listener for `--listen unix:` (a lab's default).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ControllerPaths:
    state_dir: Path
    bridge: str

    def _file(self, suffix: str) -> Path:
        return self.state_dir / f"ovsmgr-{self.bridge}{suffix}"

    @property
    def applied(self) -> Path:
        return self._file(".json")

    @property
    def runtime(self) -> Path:
        return self._file(".runtime.json")

    @property
    def info(self) -> Path:
        return self._file(".controller.json")

    @property
    def token(self) -> Path:
        return self._file(".token")

    @property
    def api_socket(self) -> Path:
        return self._file(".api.sock")

    @property
    def of_socket(self) -> Path:
        return self._file(".of.sock")

    def read_applied(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.applied.read_text()))
        except FileNotFoundError:
            return {}

    def read_info(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.info.read_text()))
        except FileNotFoundError:
            return None

    def write_info(self, info: dict[str, Any]) -> None:
        tmp = self.info.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        tmp.replace(self.info)

    def ensure_token(self) -> str:
        """The API token: kept across restarts, created (0600) when missing or not private."""
        try:
            if self.token.stat().st_mode & 0o077 == 0:
                text = self.token.read_text().strip()
                if text:
                    return text
        except FileNotFoundError:
            pass
        value = secrets.token_urlsafe(32)
        tmp = self.token.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
        tmp.replace(self.token)
        return value


def controllers_in(state_dir: Path) -> list[str]:
    """Bridges with a controller info file in `state_dir`."""
    return sorted(p.name.removeprefix("ovsmgr-").removesuffix(".controller.json")
                  for p in state_dir.glob("ovsmgr-*.controller.json"))
