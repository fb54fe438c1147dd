"""Conntrack zones of a running `ovs-vswitchd`: entries per zone, the zone's connections, limits.

OVS 3.1 keeps zone limits out of OVSDB (3.3 adds a column) and OpenFlow has no
conntrack statistics, so both go through the daemon's `dpctl/...` control
commands (`tools.appctl`, no fork). Only the userspace datapath's daemon is
reachable this way from the host; `appctl` is its control socket path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ovsmgr.southbound.tools import OvsToolError, appctl

_LIMIT = re.compile(r"^zone=(\d+),limit=(\d+),count=(\d+)", re.M)
_TOTAL = re.compile(r"Total:\s*(\d+)")


@dataclass(frozen=True)
class ZoneUsage:
    zone: int
    connections: int
    limit: int | None
    """None: the zone has no limit of its own."""

    @property
    def full(self) -> bool:
        return self.limit is not None and self.connections >= self.limit

    def to_json(self) -> dict[str, object]:
        return {"zone": self.zone, "connections": self.connections, "limit": self.limit, "full": self.full}


def zone_limit(ctl: str, zone: int) -> tuple[int, int] | None:
    """(limit, count) of the zone's own limit, or None when it has none."""
    for found in _LIMIT.finditer(appctl(ctl, "dpctl/ct-get-limits", f"zone={zone}")):
        if int(found[1]) == zone and int(found[2]):
            return int(found[2]), int(found[3])
    return None


def set_zone_limit(ctl: str, zone: int, limit: int | None) -> None:
    """Limit the zone's connections, or remove its limit (None) when it has one."""
    if limit is not None:
        appctl(ctl, "dpctl/ct-set-limits", f"zone={zone},limit={limit}")
    elif zone_limit(ctl, zone) is not None:
        appctl(ctl, "dpctl/ct-del-limits", f"zone={zone}")


def zone_connections(ctl: str, zone: int) -> int:
    """Conntrack entries of the zone (`dpctl/ct-stats-show`'s Total)."""
    found = _TOTAL.search(appctl(ctl, "dpctl/ct-stats-show", f"zone={zone}"))
    return int(found[1]) if found else 0


@dataclass(frozen=True)
class CtEntry:
    """One connection as `dpctl/dump-conntrack` prints it. `orig` and `reply` are its two tuples
    (`src`, `dst`, and `sport`/`dport`, or `id`/`type`/`code` for ICMP), as text."""

    proto: str
    orig: dict[str, str]
    reply: dict[str, str]
    zone: int
    mark: int
    state: str | None
    """The TCP state (`ESTABLISHED`, ...); None for other protocols."""
    label: int = 0
    """ct_label (`labels=0x...`, printed only when not 0)."""


def zone_entries(ctl: str, zone: int) -> list[CtEntry]:
    """The connections of one zone (`dpctl/dump-conntrack zone=N`)."""
    text = appctl(ctl, "dpctl/dump-conntrack", f"zone={zone}")
    return [entry for entry in map(parse_entry, text.splitlines()) if entry is not None and entry.zone == zone]


def parse_entry(line: str) -> CtEntry | None:
    """`tcp,orig=(src=..,dst=..,sport=..,dport=..),reply=(...),zone=N,mark=M,labels=L,protoinfo=(state=S)`;
    None for a line that is not a connection."""
    fields = _key_values(line.strip())
    if not fields or "orig" not in fields or "reply" not in fields:
        return None
    proto = next(iter(fields))
    protoinfo = _key_values(fields.get("protoinfo", ""))
    return CtEntry(proto, _key_values(fields["orig"]), _key_values(fields["reply"]), int(fields.get("zone", "0")),
                   int(fields.get("mark", "0"), 0), protoinfo.get("state"), int(fields.get("labels", "0"), 0))


def _key_values(text: str) -> dict[str, str]:
    """Top-level `key=value` items of a comma list, a value in parentheses kept whole (without
    them); a bare word maps to ''."""
    out: dict[str, str] = {}
    depth, start = 0, 0
    for i, char in enumerate(text + ","):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            key, _, value = text[start:i].partition("=")
            if key:
                out[key.strip()] = value[1:-1] if value.startswith("(") and value.endswith(")") else value
            start = i + 1
    return out


def connections(ctl: str) -> int:
    """Conntrack entries of every zone together."""
    found = _TOTAL.search(appctl(ctl, "dpctl/ct-stats-show"))
    return int(found[1]) if found else 0


def zone_usage(ctl: str, zone: int) -> ZoneUsage:
    """Connections in the zone and its limit: a full zone refuses new connections, and OVS 3.1
    counts those refusals nowhere (docs/reliability.md), so `status` says when it is full."""
    limit = zone_limit(ctl, zone)
    count = limit[1] if limit else zone_connections(ctl, zone)
    return ZoneUsage(zone, count, limit[0] if limit else None)


__all__ = ["CtEntry", "OvsToolError", "ZoneUsage", "connections", "parse_entry", "set_zone_limit",
           "zone_connections", "zone_entries", "zone_limit", "zone_usage"]
