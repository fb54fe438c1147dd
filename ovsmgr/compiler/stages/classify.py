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
from ovsmgr.compiler.matchbuild import ETH_ARP, ETH_IPV6
from ovsmgr.compiler.pipeline import REG_FROM_ZONE, CookieKind, Priority, Table, cookie
from ovsmgr.policy.ir import ResolvedPolicy

ND_TYPES = (133, 134, 135, 136, 137)
"""Router/neighbour solicitation and advertisement, redirect: IPv6 does not work without them."""


def mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def compile_classify(policy: ResolvedPolicy) -> list[Flow]:
    infra = cookie(CookieKind.INFRA)
    flows = [Flow(Table.CLASSIFY, Priority.DEFAULT, Match(), (), infra)]
    for zone in policy.zones.values():
        for name in zone.ports:
            port = policy.ports.get(name)
            if port is None:
                continue
            flows.append(Flow(
                Table.CLASSIFY, Priority.CLASSIFY_PORT, Match.of(MatchItem("in_port", port.ofport)),
                (SetField(REG_FROM_ZONE.reg, zone.id), GotoTable(Table.CONNTRACK)), infra,
            ))
    flows.append(Flow(
        Table.CLASSIFY, Priority.CLASSIFY_ARP, Match.of(MatchItem("dl_type", ETH_ARP)),
        (LearnMacBinding(Table.MAC_BINDING), Normal()), infra,
    ))
    for nd_type in ND_TYPES:
        flows.append(Flow(
            Table.CLASSIFY, Priority.CLASSIFY_ND,
            Match.of(MatchItem("dl_type", ETH_IPV6), MatchItem("nw_proto", 58), MatchItem("icmp_type", nd_type)),
            (Normal(),), infra,
        ))
    flows.extend(_arp_responders(policy))
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
