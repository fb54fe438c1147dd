"""What the fleet store holds, as plain data (`ovsmgr.fleet.store` reads and writes it)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).with_name("ovsmgr-fleet.ovsschema")
"""The store's schema, shipped in the package (`ovsdb-tool create-cluster DB SCHEMA_FILE RAFT-ADDRESS`)."""
DATABASE = "OVSMGR_Fleet"
SCHEMA_VERSION = str(json.loads(SCHEMA_FILE.read_text())["version"])


class StoreError(Exception):
    """The store could not be reached, or refused a change; nothing was written."""


class StoreConflict(StoreError):
    """Someone else wrote a new generation since this one was planned."""


@dataclass(frozen=True)
class PolicySource:
    """A policy as the store keeps it: its files' names and texts in merge order, and runtime changes."""

    digest: str
    files: tuple[tuple[str, str], ...]
    runtime: str = ""


def file_digest(text: str) -> str:
    """A File row's key: the SHA-256 of the file's text."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class SwitchRow:
    name: str
    bridge: str = ""
    datapath_id: int | None = None
    policy: str | None = None
    """Digest of the policy the fleet file wants."""
    desired_generation: int = 0
    release: str | None = None
    """Digest of the policy the rollout released to this switch."""
    released_generation: int = 0
    applied_generation: int = 0
    applied_digest: str = ""
    applied_at: str = ""
    applied_by: str = ""
    connected: bool = False
    drifted: bool = False
    error: str | None = None
    served_by: str | None = None


OBSERVED = ("applied_generation", "applied_digest", "applied_at", "applied_by", "connected", "drifted", "error",
            "served_by")
"""The columns an applier (a rollout, a controller, an agent) writes."""


@dataclass(frozen=True)
class StoreState:
    generation: int = 0
    role_generation: int = 0
    active_controller: str | None = None
    rollout: dict[str, str] = field(default_factory=dict)
    switches: dict[str, SwitchRow] = field(default_factory=dict)
    policies: dict[str, PolicySource] = field(default_factory=dict)


@dataclass(frozen=True)
class DesiredSwitch:
    """What `write_generation` records for one switch."""

    bridge: str
    datapath_id: int | None
    policy: PolicySource


def opt(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def policy_of(row: Any, texts: dict[str, str]) -> PolicySource | None:
    """The policy of a Policy row, its files' texts from `texts` (File rows' texts by digest); None
    while one of its File rows has not arrived (a client watching one switch asks for them once it
    has the row). A row without files (written before schema 2.0.0 and kept by `ovsdb-client
    convert`) has its texts in `sources`."""
    digests = dict(row.file_digests)
    if not digests:
        files = tuple((str(name), str(text)) for name, text in json.loads(row.sources or "[]"))
        return PolicySource(str(row.digest), files, str(row.runtime))
    if any(digest not in texts for digest in digests.values()):
        return None
    names = dict(row.names)
    return PolicySource(str(row.digest), tuple((str(names.get(i, "")), texts[digests[i]]) for i in sorted(digests)),
                        str(row.runtime))


def switch_of(row: Any, policies: dict[Any, PolicySource]) -> SwitchRow:
    def digest(ref: list[Any]) -> str | None:
        target = ref[0] if ref else None
        if target is None:
            return None
        found = policies.get(target.uuid)
        return found.digest if found else None

    dpid = opt(row.datapath_id)
    return SwitchRow(
        str(row.name), str(row.bridge), int(dpid, 16) if dpid else None, digest(row.policy),
        int(row.desired_generation), digest(row.release), int(row.released_generation),
        int(row.applied_generation), str(row.applied_digest), str(row.applied_at), str(row.applied_by),
        bool(row.connected), bool(row.drifted), opt(row.error), opt(row.served_by))

