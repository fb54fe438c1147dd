"""VLAN zones: a zone may be one 802.1Q VLAN of its ports (`vlan:`), so a trunk port is in
several zones, one per VLAN, and at most one for its untagged frames.

Zone membership is (port, VLAN). When any zone of a policy is a VLAN, CLASSIFY matches every
port's zones on `vlan_vid` too (an untagged zone on `vlan_vid=0`, frames without a tag), so a
frame of a VLAN no zone of its port has, and a tagged frame on a port without VLAN zones, is
dropped where it comes in. A VLAN zone's tag is taken off there: conntrack, the rules and NAT
see untagged packets, the conntrack zone stays the policy's, and the VLAN is part of the zone
classification only. A policy without VLAN zones gets none of this (its flows look at no tag).

On the way out a packet is tagged for where it goes: toward a port with VLAN zones, OUTPUT and
OUTPUT_TRANSLATED hand it to VLAN_OUT, which picks the VLAN zone of that port whose networks
hold the destination as the packet leaves (after NAT's translation, so a masqueraded reply finds
its VLAN), pushes that zone's tag and sends it; no such zone: untagged when the port has an
untagged zone, else the packet is dropped. EGRESS gives rules the same zone for `to:`, by the
destination as it arrives. VLAN zones need `forwarding: ports` (the links decide the port; OVS
NORMAL switches within one VLAN), which the policy checks.

ARP stays switched normally with its tag taken off, except ARP for an address of a VLAN zone,
which CLASSIFY sends to that zone's ports with the zone's tag (a host of the untagged WAN asking
for a staff host's address; the answers to a VLAN host's own requests).
"""

from __future__ import annotations

from dataclasses import dataclass

from ovsmgr.compiler.flows import (
    Action,
    Flow,
    GotoTable,
    LearnMacBinding,
    Match,
    MatchItem,
    Output,
    PopVlan,
    PushVlan,
    SetField,
)
from ovsmgr.compiler.matchbuild import ETH_ARP, family, prefix, reg
from ovsmgr.compiler.pipeline import (
    REG_OUT_PORT,
    REG_TO_ZONE,
    VLAN_PRESENT,
    CookieKind,
    Priority,
    Table,
    cookie,
)
from ovsmgr.policy.ir import IPNetwork, ResolvedPolicy, ZoneInfo

INFRA = cookie(CookieKind.INFRA)


@dataclass(frozen=True)
class Ingress:
    """What CLASSIFY matches for one zone on one port, and what takes the zone's tag off."""

    zone: ZoneInfo
    port: str
    match: Match
    untag: tuple[Action, ...]


def ingresses(policy: ResolvedPolicy, zone: ZoneInfo) -> list[Ingress]:
    """The (port, VLAN) pairs of a zone, as CLASSIFY matches them."""
    out = []
    for name in zone.ports:
        port = policy.ports.get(name)
        if port is None:
            continue
        match = Match.of(MatchItem("in_port", port.ofport))
        if policy.has_vlans:
            match += Match.of(MatchItem("vlan_vid", vlan_vid(zone.vlan)))
        out.append(Ingress(zone, name, match, (PopVlan(),) if zone.vlan is not None else ()))
    return out


def responder_matches(policy: ResolvedPolicy) -> list[Match]:
    """Where the switch's own ARP and neighbour answers may be asked: anywhere without VLAN zones
    (as before them), else only by a (port, VLAN) of a zone, so a frame of an unknown VLAN gets none."""
    if not policy.has_vlans:
        return [Match()]
    return [i.match for zone in sorted(policy.zones.values(), key=lambda z: z.id) for i in ingresses(policy, zone)]


def vlan_vid(vlan: int | None) -> int:
    """OpenFlow's `vlan_vid` of a frame of `vlan` (None: a frame without a tag)."""
    return 0 if vlan is None else VLAN_PRESENT | vlan


def tag(vlan: int) -> tuple[Action, ...]:
    return (PushVlan(), SetField("vlan_vid", VLAN_PRESENT | vlan))


def trunk_zones(policy: ResolvedPolicy, port: str) -> tuple[ZoneInfo, ...]:
    """The VLAN zones of a port (empty: the port carries no VLAN zone)."""
    return tuple(z for z in policy.port_zones(port) if z.vlan is not None)


def out_action(policy: ResolvedPolicy, port: str) -> Action:
    """How a packet leaves by `port`: straight out, or through VLAN_OUT when the port has VLAN zones."""
    return GotoTable(Table.VLAN_OUT) if trunk_zones(policy, port) else Output(policy.ports[port].ofport)


def egress_to_vlans(policy: ResolvedPolicy, in_port: int, peer: str) -> list[Flow]:
    """EGRESS for a link toward a port with VLAN zones: the zone is the one whose networks hold the
    destination (the link's own flow, below these, gives the untagged zone or none)."""
    out = policy.ports[peer].ofport
    return [Flow(Table.EGRESS, Priority.EGRESS_VLAN_PREFIX_BASE + network.prefixlen,
                 Match.of(MatchItem("in_port", in_port)) + family(4) + Match.of(prefix("nw_dst", network)),
                 (SetField(REG_OUT_PORT.reg, out), SetField(REG_TO_ZONE.reg, zone.id), GotoTable(Table.STATE)),
                 INFRA)
            for zone in trunk_zones(policy, peer) for network in zone.networks if network.version == 4]


def compile_vlan_out(policy: ResolvedPolicy) -> list[Flow]:
    """VLAN_OUT: tag for the VLAN zone that holds the destination, or untagged, or drop."""
    if not policy.has_vlans:
        return []
    flows = [Flow(Table.VLAN_OUT, Priority.DEFAULT, Match(), (), INFRA)]
    for name, port in sorted(policy.ports.items(), key=lambda p: p[1].ofport):
        zones = trunk_zones(policy, name)
        if not zones:
            continue
        here = Match.of(reg(REG_OUT_PORT, port.ofport))
        if port.zone:
            flows.append(Flow(Table.VLAN_OUT, Priority.VLAN_OUT_UNTAGGED, here, (Output(port.ofport),), INFRA))
        for zone in zones:
            assert zone.vlan is not None
            flows += [Flow(Table.VLAN_OUT, Priority.VLAN_OUT_PREFIX_BASE + network.prefixlen,
                           here + family(4) + Match.of(prefix("nw_dst", network)),
                           (*tag(zone.vlan), Output(port.ofport)), INFRA)
                      for network in zone.networks if network.version == 4]
    return flows


def arp_to_vlans(policy: ResolvedPolicy, ingress: Ingress) -> list[Flow]:
    """ARP that comes in by `ingress` and asks for (or answers) an address of a VLAN zone on another
    port: to that zone's ports with its tag. Learned like the ingress zone's other ARP (`_arp_flows`):
    only from senders in its IPv4 networks, when it has some."""
    if not policy.has_vlans:
        return []
    arp = ingress.match + Match.of(MatchItem("dl_type", ETH_ARP))
    senders = [n for n in ingress.zone.networks if n.version == 4]
    flows = []
    for zone in sorted(policy.zones.values(), key=lambda z: z.id):
        if zone.vlan is None:
            continue
        outs = tuple(policy.ports[p].ofport for p in zone.ports if p in policy.ports and p != ingress.port)
        if not outs:
            continue
        send = (*ingress.untag, *tag(zone.vlan), *(Output(o) for o in outs))
        learn = (LearnMacBinding(Table.MAC_BINDING), *send)
        for network in (n for n in zone.networks if n.version == 4):
            asked = arp + Match.of(_arp_prefix("arp_tpa", network))
            flows.append(Flow(Table.CLASSIFY, Priority.CLASSIFY_ARP_TO_VLAN, asked,
                              send if senders else learn, INFRA))
            flows += [Flow(Table.CLASSIFY, Priority.CLASSIFY_ARP_TO_VLAN_LEARN,
                           asked + Match.of(_arp_prefix("arp_spa", sender)), learn, INFRA) for sender in senders]
    return flows


def _arp_prefix(field: str, network: IPNetwork) -> MatchItem:
    item = prefix("nw_src", network)
    return MatchItem(field, item.value, item.mask)
