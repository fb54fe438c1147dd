"""`ovsmgr fleet status`: per switch, what the store wants and what the switch runs.

`desired_generation` and `applied_generation` come from the store; `connected` and `drifted` are
looked at now, on the switch (`ovsmgr.switch.status.switch_status`: its flows against the record of
the last apply), and written back to the store as what was observed. A switch that controllers
serve and that has no `db:` cannot be looked at from here: its row says what its controller saw.
A switch drifted when its flows differ from what was applied, or when what it runs is not what the
fleet applied to it (an `ovsmgr apply` by hand). `error` says why a switch is not in line: it could not be reached now, or
the last rollout failed on it or stopped before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ovsmgr.fleet.fleetfile import Fleet
from ovsmgr.fleet.state import StoreState, SwitchRow
from ovsmgr.fleet.store import FleetStore
from ovsmgr.fleet.targets import switch_target
from ovsmgr.switch.status import switch_status


@dataclass(frozen=True)
class Seen:
    connected: bool
    drifted: bool
    error: str | None


def look(fleet: Fleet, row: SwitchRow) -> Seen:
    """The switch as it is now (unreachable: not connected, and why)."""
    try:
        info = switch_status(switch_target(fleet.switches[row.name]), row.bridge)
    except Exception as exc:  # whatever stops the look is the answer: the switch is not reachable
        return Seen(False, False, f"unreachable: {exc}")
    if not info["exists"]:
        return Seen(True, row.applied_generation > 0, f"bridge {row.bridge} does not exist")
    foreign = bool(row.applied_digest) and info.get("digest") != row.applied_digest
    return Seen(True, bool(info["drifted"]) or foreign, None)


def fleet_status(fleet: Fleet, store: FleetStore) -> list[dict[str, Any]]:
    """One entry per switch of the fleet file, in its order (a switch not yet in the store: generation 0)."""
    state = store.state()
    out = []
    for name in fleet.switches:
        row = state.switches.get(name)
        if row is None:
            out.append(_entry(name, state, None, Seen(False, False, "not in the store: run `ovsmgr fleet apply`")))
            continue
        spec = fleet.switches[name]
        if spec.db is None and spec.controllers:  # nothing to look through: what its controller wrote
            out.append(_entry(name, state, row, Seen(row.connected, row.drifted, None)))
            continue
        seen = look(fleet, row)
        store.observe(name, connected=seen.connected, drifted=seen.drifted)
        out.append(_entry(name, state, row, seen))
    return out


def _entry(name: str, state: StoreState, row: SwitchRow | None, seen: Seen) -> dict[str, Any]:
    return {
        "switch": name,
        "desired_generation": row.desired_generation if row else 0,
        "applied_generation": row.applied_generation if row else 0,
        "connected": seen.connected,
        "drifted": seen.drifted,
        "error": seen.error or (row.error if row else None),
        "bridge": row.bridge if row else None,
        "released_generation": row.released_generation if row else 0,
        "applied_at": (row.applied_at or None) if row else None,
        "fleet_generation": state.generation,
        "served_by": row.served_by if row else None,
    }
