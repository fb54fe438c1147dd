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
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ovsmgr.southbound.openflow import FlowMod
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.plan import flows_digest
from ovsmgr.switch.statefile import atomic_write

EXT = "ovsmgr"
"""Prefix of the Bridge external_ids keys ovsmgr writes."""
FLOWS_MAGIC = b"OVSMGR-FLOWS-1\n"
_FLOW = struct.Struct("!BHQHH")


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
        data = asdict(self)
        data["rules"] = {f"{k:#x}": v for k, v in self.rules.items()}
        return {k.replace("_", "-"): v for k, v in data.items() if v is not None}

    @staticmethod
    def from_json(data: dict[str, Any]) -> AppliedRecord:
        values = {k.replace("-", "_"): v for k, v in data.items()}
        values["rules"] = {int(k, 16): v for k, v in values.get("rules", {}).items()}
        known = set(AppliedRecord.__dataclass_fields__)
        return AppliedRecord(**{k: v for k, v in values.items() if k in known})

    def external_ids(self) -> dict[str, str]:
        return {f"{EXT}-{k}": str(v) for k, v in self.to_json().items() if k != "rules"}


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


def read_record(target: SwitchTarget, bridge: str) -> AppliedRecord | None:
    try:
        return AppliedRecord.from_json(json.loads(state_path(target, bridge).read_text()))
    except FileNotFoundError:
        return None


def read_flows(target: SwitchTarget, bridge: str) -> list[FlowMod] | None:
    """The flows recorded at the last apply (None: nothing was recorded)."""
    try:
        return decode_flows(flows_path(target, bridge).read_bytes())
    except FileNotFoundError:
        return None


def encode_flows(mods: Iterable[FlowMod]) -> bytes:
    parts = [FLOWS_MAGIC]
    for mod in mods:
        parts.append(_FLOW.pack(mod.table, mod.priority, mod.cookie, len(mod.oxm), len(mod.instructions)))
        parts.append(mod.oxm)
        parts.append(mod.instructions)
    return b"".join(parts)


def decode_flows(data: bytes) -> list[FlowMod]:
    if not data.startswith(FLOWS_MAGIC):
        raise ValueError("not an ovsmgr flows file")
    out = []
    offset, end, size = len(FLOWS_MAGIC), len(data), _FLOW.size
    while offset < end:
        table, priority, cookie, n_oxm, n_instr = _FLOW.unpack_from(data, offset)
        offset += size
        oxm = data[offset:offset + n_oxm]
        offset += n_oxm
        out.append(FlowMod(table, priority, oxm, cookie, data[offset:offset + n_instr]))
        offset += n_instr
    return out
