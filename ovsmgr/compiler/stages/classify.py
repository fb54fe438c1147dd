"""Table CLASSIFY: ports to zones, ARP (answered for NAT-owned addresses, else switched), ND."""

from __future__ import annotations

import ipaddress

from ovsmgr.compiler.flows import (
    Flow,
    GotoTable,
    InPort,
    LearnMacBinding,
    Match,
    MatchItem,
    Move,
    Normal,
    SetField,
)
from ovsmgr.compiler.matchbuild import ETH_ARP, ETH_IPV6, prefix
from ovsmgr.compiler.pipeline import REG_FROM_ZONE, CookieKind, Priority, Table, cookie
from ovsmgr.policy.ir import IPNetwork, ResolvedPolicy

ND_TYPES = (133, 134, 135, 136, 137)
"""Router/neighbour solicitation and advertisement, redirect: IPv6 does not work without them."""


def mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def compile_classify(policy: ResolvedPolicy) -> list[Flow]:
    """Only ports of a zone get anything through, ARP and neighbour discovery included."""
    infra = cookie(CookieKind.INFRA)
    flows = [Flow(Table.CLASSIFY, Priority.DEFAULT, Match(), (), infra)]
    for zone in policy.zones.values():
        for name in zone.ports:
            port = policy.ports.get(name)
            if port is None:
                continue
            in_port = Match.of(MatchItem("in_port", port.ofport))
            flows.append(Flow(Table.CLASSIFY, Priority.CLASSIFY_PORT, in_port,
                              (SetField(REG_FROM_ZONE.reg, zone.id), GotoTable(Table.CONNTRACK)), infra))
            flows.extend(_arp_flows(in_port, zone.networks))
            for nd_type in ND_TYPES:
                nd = Match.of(MatchItem("dl_type", ETH_IPV6), MatchItem("nw_proto", 58), MatchItem("icmp_type", nd_type))
                flows.append(Flow(Table.CLASSIFY, Priority.CLASSIFY_ND, in_port + nd, (Normal(),), infra))
    flows.extend(_arp_responders(policy))
    return flows


def _arp_flows(in_port: Match, networks: tuple[IPNetwork, ...]) -> list[Flow]:
    """Switch ARP normally; learn MAC bindings only for addresses the zone may have.

    A zone with IPv4 networks teaches bindings only for senders inside them, so a
    host in another zone cannot claim a LAN address and draw its translated traffic.
    """
    infra = cookie(CookieKind.INFRA)
    arp = in_port + Match.of(MatchItem("dl_type", ETH_ARP))
    learn = (LearnMacBinding(Table.MAC_BINDING), Normal())
    v4 = [n for n in networks if n.version == 4]
    if not v4:
        return [Flow(Table.CLASSIFY, Priority.CLASSIFY_ARP, arp, learn, infra)]
    flows = [Flow(Table.CLASSIFY, Priority.CLASSIFY_ARP, arp, (Normal(),), infra)]
    for network in v4:
        item = prefix("nw_src", network)
        flows.append(Flow(Table.CLASSIFY, Priority.CLASSIFY_ARP_LEARN,
                          arp + Match.of(MatchItem("arp_spa", item.value, item.mask)), learn, infra))
    return flows


def _arp_responders(policy: ResolvedPolicy) -> list[Flow]:
    """Answer ARP requests for addresses NAT owns with the switch's MAC, out of the asking port."""
    mac = mac_int(policy.mac)
    flows = []
    for address in policy.nat_owned_addresses():
        if not isinstance(address, ipaddress.IPv4Address):
            continue
        match = Match.of(MatchItem("dl_type", ETH_ARP), MatchItem("arp_op", 1), MatchItem("arp_tpa", int(address)))
        actions = (
            Move("dl_src", "dl_dst"), SetField("dl_src", mac), SetField("arp_op", 2),
            Move("arp_sha", "arp_tha"), SetField("arp_sha", mac), Move("arp_spa", "arp_tpa"),
            SetField("arp_spa", int(address)), InPort(),
        )
        flows.append(Flow(Table.CLASSIFY, Priority.CLASSIFY_ARP_RESPONDER, match, actions, cookie(CookieKind.INFRA)))
    return flows
