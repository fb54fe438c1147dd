"""The applied-state record: what is on a bridge, who put it there, written in one place.

`apply`, a rollback and the controller all write it through `write_record`, so
`status` reads the same facts whoever applied. Three places hold it:

- `STATE_DIR/ovsmgr-BRIDGE.json`: the record (generation, digests, when, by whom,
  from which files, the conntrack zone, rule names by cookie);
- `STATE_DIR/ovsmgr-BRIDGE.flows`: the flows themselves, in their OpenFlow wire
  form (what `status` compares the switch with, what `restore` and rollbacks push);
- the bridge's OVSDB `external_ids` (`ovsmgr-generation`, `ovsmgr-digest`, ...), so
  the switch itself says what it runs.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovsmgr.southbound.openflow import FlowMod
from ovsmgr.southbound.openflow.messages import pack_flows, unpack_flows
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.plan import flows_digest
from ovsmgr.switch.statefile import atomic_write

EXT = "ovsmgr"
"""Prefix of the Bridge external_ids keys ovsmgr writes."""
FLOWS_MAGIC = b"OVSMGR-FLOWS-2\n"


def state_path(target: SwitchTarget, bridge: str) -> Path:
    return target.state_dir / f"ovsmgr-{bridge}.json"


def flows_path(target: SwitchTarget, bridge: str) -> Path:
    return target.state_dir / f"ovsmgr-{bridge}.flows"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def applied_by() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


@dataclass(frozen=True)
class AppliedRecord:
    bridge: str
    generation: int
    digest: str
    """The policy's digest (`ResolvedPolicy.digest`: its files' texts, or its data with runtime changes)."""
    flows_digest: str
    flow_count: int
    ct_zone: int
    sources: str
    rules: dict[int, str] = field(default_factory=dict)
    """Cookie rule id -> rule name (plans name the rules of flows that were removed since)."""
    applied_at: str = field(default_factory=now)
    applied_by: str = field(default_factory=applied_by)
    runtime_changes: int | None = None
    """The controller's runtime changes on top of the files (None: applied by `ovsmgr apply`)."""
    rolled_back_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = {name.replace("_", "-"): getattr(self, name) for name in self.__dataclass_fields__}
        data["rules"] = {f"{k:#x}": v for k, v in self.rules.items()}
        return {k: v for k, v in data.items() if v is not None}

    @staticmethod
    def from_json(data: dict[str, Any]) -> AppliedRecord:
        values = {k.replace("-", "_"): v for k, v in data.items()}
        values["rules"] = {int(k, 16): v for k, v in values.get("rules", {}).items()}
        known = set(AppliedRecord.__dataclass_fields__)
        return AppliedRecord(**{k: v for k, v in values.items() if k in known})

    def external_ids(self) -> dict[str, str]:
        return {f"{EXT}-{name.replace('_', '-')}": str(value) for name in self.__dataclass_fields__
                if name != "rules" and (value := getattr(self, name)) is not None}


def make_record(bridge: str, generation: int, digest: str, mods: Sequence[FlowMod], ct_zone: int,
                sources: Sequence[str], rules: dict[int, str], **extra: Any) -> AppliedRecord:
    return AppliedRecord(bridge, generation, digest, flows_digest(mods), len(mods), ct_zone, ",".join(sources),
                         dict(rules), **extra)


def write_record(target: SwitchTarget, record: AppliedRecord, mods: Sequence[FlowMod],
                 db: SwitchDB | None = None) -> None:
    """Write the flows, the record and the bridge's external_ids (through `db` if given)."""
    write_files(target, record, mods)
    if db is not None:
        db.set_external_ids(record.bridge, record.external_ids())
    else:
        with SwitchDB(target.db) as own:
            own.set_external_ids(record.bridge, record.external_ids())


def write_files(target: SwitchTarget, record: AppliedRecord, mods: Sequence[FlowMod]) -> None:
    """The record's two files (flows first: a record never names flows that are not on disk)."""
    target.state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(flows_path(target, record.bridge), encode_flows(mods))
    atomic_write(state_path(target, record.bridge), json.dumps(record.to_json()))


@dataclass(frozen=True)
class RecordFiles:
    """The record's files as they were (bytes, or None where there was none), to put back verbatim
    when an apply that replaced them fails."""

    files: dict[Path, bytes | None]

    @staticmethod
    def read(target: SwitchTarget, bridge: str) -> RecordFiles:
        out: dict[Path, bytes | None] = {}
        for path in (flows_path(target, bridge), state_path(target, bridge)):
            try:
                out[path] = path.read_bytes()
            except FileNotFoundError:
                out[path] = None
        return RecordFiles(out)

    def write_back(self) -> None:
        for path, data in self.files.items():
            if data is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write(path, data)


def read_record(target: SwitchTarget, bridge: str) -> AppliedRecord | None:
    try:
        return AppliedRecord.from_json(json.loads(state_path(target, bridge).read_text()))
    except FileNotFoundError:
        return None


def read_flows(target: SwitchTarget, bridge: str) -> list[FlowMod] | None:
    """The flows recorded at the last apply (None: nothing was recorded, or in a form this ovsmgr
    does not read: an older release's, which the next apply replaces)."""
    try:
        return decode_flows(flows_path(target, bridge).read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def encode_flows(mods: Iterable[FlowMod]) -> bytes:
    return FLOWS_MAGIC + pack_flows(mods)


def decode_flows(data: bytes) -> list[FlowMod]:
    """Flows written by `encode_flows`; ValueError for anything else (another format, a cut file)."""
    if not data.startswith(FLOWS_MAGIC):
        raise ValueError("not an ovsmgr flows file of this version")
    return unpack_flows(data, len(FLOWS_MAGIC))
