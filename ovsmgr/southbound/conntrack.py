"""Conntrack zones of a running `ovs-vswitchd`: entries per zone and per-zone limits.

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


__all__ = ["OvsToolError", "ZoneUsage", "connections", "set_zone_limit", "zone_connections", "zone_limit",
           "zone_usage"]
