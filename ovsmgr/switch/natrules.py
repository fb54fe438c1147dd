"""Per-NAT-rule counters: what each NAT rule translated and how many connections it holds now.

Packets and bytes are the flow statistics of the rule's NAT_COUNT flows (cookie kind NAT_COUNT,
one per zone it translates in), which every packet of a translated connection meets in both
directions. Connections are the conntrack entries of those zones grouped by the NAT rule id the
translating commit wrote into ct_label (docs/pipeline.md): a connection translated twice (DNAT,
then SNAT in the second zone) counts once for each rule. `status` and the controller's metrics
both use this module, so they cannot disagree on what a rule's numbers are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ovsmgr.compiler.pipeline import CT_LABEL_NAT_RULE_SHIFT, CookieKind, Table, cookie_parts
from ovsmgr.compiler.stages.nat import followers
from ovsmgr.policy.ir import ResolvedPolicy
from ovsmgr.southbound.conntrack import CtEntry, OvsToolError, zone_entries
from ovsmgr.southbound.openflow import InstalledFlow
from ovsmgr.southbound.openflow.oxm import decode_match


@dataclass(frozen=True)
class NatRuleCount:
    rule: str
    packets: int
    bytes: int
    connections: int | None
    """None: conntrack could not be read (a remote switch, or the daemon did not answer)."""

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "packets": self.packets, "bytes": self.bytes, "connections": self.connections}


def nat_rule_id(label: int) -> int:
    """The NAT rule id a connection's ct_label carries (0: not translated in its zone)."""
    return (label >> CT_LABEL_NAT_RULE_SHIFT) & 0xFFFF_FFFF


def count_totals(stats: Mapping[int, tuple[int, int] | list[int]]) -> dict[int, list[int]]:
    """NAT rule id -> [packets, bytes] of its NAT_COUNT flows, from cookie -> (packets, bytes)."""
    out: dict[int, list[int]] = {}
    for value, (packets, octets) in stats.items():
        ours, kind, rid = cookie_parts(value)
        if ours and kind is CookieKind.NAT_COUNT:
            entry = out.setdefault(rid, [0, 0])
            entry[0] += packets
            entry[1] += octets
    return out


def flow_totals(flows: Iterable[InstalledFlow]) -> dict[int, list[int]]:
    """`count_totals` of flows read back from a switch (two flows of one rule share a cookie)."""
    out: dict[int, list[int]] = {}
    for flow in flows:
        ours, kind, rid = cookie_parts(flow.cookie)
        if ours and kind is CookieKind.NAT_COUNT:
            entry = out.setdefault(rid, [0, 0])
            entry[0] += flow.packets
            entry[1] += flow.bytes
    return out


def counted_zones(flows: Iterable[InstalledFlow]) -> list[int]:
    """The conntrack zones the switch's NAT_COUNT flows count in (the policy's, and the second
    zone when an SNAT rule follows a DNAT rule)."""
    zones: set[int] = set()
    for flow in flows:
        if flow.mod.table == Table.NAT_COUNT and cookie_parts(flow.cookie)[1] is CookieKind.NAT_COUNT:
            item = decode_match(flow.mod.oxm).get("ct_zone")
            if item is not None:
                zones.add(item.value)
    return sorted(zones)


def policy_zones(policy: ResolvedPolicy) -> list[int]:
    """The zones the policy's NAT rules translate in: what `counted_zones` finds on its switch."""
    if not policy.nat:
        return []
    return [policy.ct_zone] + ([policy.second_zone] if followers(policy) else [])


def group_connections(entries: Iterable[CtEntry]) -> dict[int, int]:
    """NAT rule id -> the connections whose entry names it."""
    out: dict[int, int] = {}
    for entry in entries:
        rid = nat_rule_id(entry.label)
        if rid:
            out[rid] = out.get(rid, 0) + 1
    return out


def zone_connections_by_rule(ctl: str, zones: Iterable[int]) -> dict[int, int]:
    """NAT rule id -> current connections, over the zones (`dpctl/dump-conntrack zone=N`)."""
    out: dict[int, int] = {}
    for zone in zones:
        for rid, count in group_connections(zone_entries(ctl, zone)).items():
            out[rid] = out.get(rid, 0) + count
    return out


def try_connections_by_rule(ctl: str | None, zones: Iterable[int]) -> dict[int, int] | None:
    """`zone_connections_by_rule`, or None when conntrack cannot be read (no control socket: a
    remote switch; the daemon did not answer)."""
    zones = list(zones)
    if ctl is None or not zones:
        return None if ctl is None else {}
    try:
        return zone_connections_by_rule(ctl, zones)
    except OvsToolError:
        return None


def nat_rule_counts(totals: Mapping[int, list[int]], connections: Mapping[int, int] | None,
                    names: Mapping[int, str]) -> list[NatRuleCount]:
    """One row per NAT rule that has counting flows, by rule name."""
    rows = [NatRuleCount(names.get(rid, f"(rule {rid:#010x})"), packets, octets,
                         None if connections is None else connections.get(rid, 0))
            for rid, (packets, octets) in totals.items()]
    return sorted(rows, key=lambda r: r.rule)
