"""Hairpin NAT: a translated packet whose new destination is back in the zone it came from.

An inside client reaching an inside server at its public address: DNAT sends the
connection back toward the client's own zone. With forwarding: ports its link
would take it out of the other port, and OVS NORMAL never sends a frame back by
the port it came in by, so for a zone of one port whose networks hold the DNAT's
target, a translated packet for an address of those networks goes out of the
port it came in by (replies too: after their translations they are for the
client, in the same zone). An SNAT rule for the zone (`from` and `to` the same)
then makes the server answer through the switch rather than straight to the
client on their shared segment (`twozones`).
"""

from __future__ import annotations

from ovsmgr.compiler.flows import Flow, InPort, Match, Resubmit
from ovsmgr.compiler.matchbuild import family, prefix, reg
from ovsmgr.compiler.pipeline import REG_FROM_ZONE, CookieKind, Priority, Table, cookie
from ovsmgr.compiler.stages.nat import COUNT, hairpin_zone
from ovsmgr.compiler.stages.vlans import tag
from ovsmgr.policy.ir import ResolvedPolicy, ZoneInfo

INFRA = cookie(CookieKind.INFRA)


def compile_hairpin(policy: ResolvedPolicy) -> list[Flow]:
    zones: dict[str, ZoneInfo] = {}
    for rule in policy.nat:
        if rule.kind == "dnat":
            for target in rule.targets():
                zone = hairpin_zone(policy, rule.match.from_zone, target)
                if zone is not None:
                    zones[zone.name] = zone
    flows = []
    for zone in sorted(zones.values(), key=lambda z: z.id):
        retag = tag(zone.vlan) if zone.vlan is not None else ()  # CLASSIFY took its tag off
        for network in zone.networks:
            match = Match.of(reg(REG_FROM_ZONE, zone.id)) + family(network.version) + Match.of(prefix("nw_dst", network))
            flows.append(Flow(Table.OUTPUT_TRANSLATED, Priority.OUTPUT_HAIRPIN, match,
                              (COUNT, Resubmit(Table.MAC_BINDING), *retag, InPort()), INFRA))
    return flows
