"""Where controller mode keeps its files: all in the target's state directory, per bridge.

- `ovsmgr-BRIDGE.json`: what is applied (the same record `apply` writes; `status` reads it);
- `ovsmgr-BRIDGE.runtime.json`: the runtime changes (see `runtime`);
- `ovsmgr-BRIDGE.controller.json`: the running controller (pid, API and OpenFlow endpoints);
- `ovsmgr-BRIDGE.token`: the API token, mode 0600 (root only), read by the CLI;
- `ovsmgr-BRIDGE.api.sock`: the API's unix socket, mode 0600, unless `--api HOST:PORT`;
- `ovsmgr-BRIDGE.of.sock`: the OpenFlow listener for `--listen unix:` (a lab's default).

Every file is written by `ovsmgr.switch.statefile.atomic_write` (a fresh temporary file,
fsync, rename; a symbolic link in place of a file is refused), and the token is
read only if it is a regular file private to its owner, never through a link.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovsmgr.switch.statefile import atomic_write, read_private


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
        atomic_write(self.info, json.dumps(info, indent=1))

    def ensure_token(self) -> str:
        """The API token: kept across restarts, created (0600) when missing or not private.
        A token that is a symbolic link is never read; writing over it is refused (`StateFileError`)."""
        text = (read_private(self.token) or "").strip()
        if text:
            return text
        value = secrets.token_urlsafe(32)
        atomic_write(self.token, value + "\n", mode=0o600)
        return value


def controllers_in(state_dir: Path) -> list[str]:
    """Bridges with a controller info file in `state_dir`."""
    return sorted(p.name.removeprefix("ovsmgr-").removesuffix(".controller.json")
                  for p in state_dir.glob("ovsmgr-*.controller.json"))
