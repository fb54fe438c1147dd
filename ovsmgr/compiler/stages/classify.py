"""Table CLASSIFY: ports to zones; ARP and neighbour discovery (answered for NAT-owned addresses,
else switched, the senders' MAC bindings learned where NAT needs them)."""

from __future__ import annotations

import ipaddress

from ovsmgr.compiler.flows import (
    Action,
    Flow,
    GotoTable,
    InPort,
    LearnMacBinding,
    Match,
    MatchItem,
    Move,
    Normal,
    Resubmit,
    SetField,
)
from ovsmgr.compiler.matchbuild import ETH_ARP, ETH_IPV6, prefix
from ovsmgr.compiler.pipeline import REG_FROM_ZONE, CookieKind, Priority, Table, cookie
from ovsmgr.compiler.stages.nat import translated_families
from ovsmgr.compiler.stages.vlans import arp_to_vlans, ingresses, responder_matches
from ovsmgr.policy.ir import IPNetwork, ResolvedPolicy

ND_TYPES = (133, 134, 135, 136, 137)
"""Router/neighbour solicitation and advertisement, redirect: IPv6 does not work without them."""
ND_SOLICIT, ND_ADVERT = 135, 136
ND_FLAGS_SOLICITED_OVERRIDE = 0x6000_0000
"""The R, S and O bits of an advertisement's first word: S (an answer) and O (override the cache)."""
ND_OPTION_TARGET_LLADDR = 2


def mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def compile_classify(policy: ResolvedPolicy) -> list[Flow]:
    """Only ports of a zone get anything through, ARP and neighbour discovery included."""
    infra = cookie(CookieKind.INFRA)
    flows = [Flow(Table.CLASSIFY, Priority.DEFAULT, Match(), (), infra)]
    learn_nd = 6 in translated_families(policy)
    for zone in policy.zones.values():
        for ingress in ingresses(policy, zone):
            flows.append(Flow(Table.CLASSIFY, Priority.CLASSIFY_PORT, ingress.match,
                              (SetField(REG_FROM_ZONE.reg, zone.id), *ingress.untag, GotoTable(Table.CONNTRACK)),
                              infra))
            flows.extend(_arp_flows(ingress.match, zone.networks, ingress.untag))
            flows.extend(_nd_flows(ingress.match, zone.networks, learn_nd, ingress.untag))
            flows.extend(arp_to_vlans(policy, ingress))
    flows.extend(_arp_responders(policy))
    flows.extend(_nd_responders(policy))
    return flows


def _nd(nd_type: int) -> Match:
    return Match.of(MatchItem("dl_type", ETH_IPV6), MatchItem("nw_proto", 58), MatchItem("icmp_type", nd_type))


def _nd_flows(in_port: Match, networks: tuple[IPNetwork, ...], learn: bool,
              untag: tuple[Action, ...] = ()) -> list[Flow]:
    """Switch neighbour discovery normally (a VLAN zone's without its tag); with IPv6 NAT, learn MAC
    bindings from solicitations and advertisements (their source is the sender's own address), only for
    addresses the zone may have, as `_arp_flows` does for IPv4."""
    infra = cookie(CookieKind.INFRA)
    learning = (LearnMacBinding(Table.MAC_BINDING, version=6), *untag, Normal())
    v6 = [n for n in networks if n.version == 6]
    flows = []
    for nd_type in ND_TYPES:
        teaches = learn and nd_type in (ND_SOLICIT, ND_ADVERT)
        actions = learning if teaches and not v6 else (*untag, Normal())
        flows.append(Flow(Table.CLASSIFY, Priority.CLASSIFY_ND, in_port + _nd(nd_type), actions, infra))
        if teaches:
            flows += [Flow(Table.CLASSIFY, Priority.CLASSIFY_ND_LEARN,
                           in_port + _nd(nd_type) + Match.of(prefix("nw_src", network)), learning, infra)
                      for network in v6]
    return flows


def _arp_flows(in_port: Match, networks: tuple[IPNetwork, ...], untag: tuple[Action, ...] = ()) -> list[Flow]:
    """Switch ARP normally (a VLAN zone's without its tag); learn MAC bindings only for addresses the
    zone may have.

    A zone with IPv4 networks teaches bindings only for senders inside them, so a
    host in another zone cannot claim a LAN address and draw its translated traffic.
    """
    infra = cookie(CookieKind.INFRA)
    arp = in_port + Match.of(MatchItem("dl_type", ETH_ARP))
    learn = (LearnMacBinding(Table.MAC_BINDING), *untag, Normal())
    v4 = [n for n in networks if n.version == 4]
    if not v4:
        return [Flow(Table.CLASSIFY, Priority.CLASSIFY_ARP, arp, learn, infra)]
    flows = [Flow(Table.CLASSIFY, Priority.CLASSIFY_ARP, arp, (*untag, Normal()), infra)]
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
        flows += [Flow(Table.CLASSIFY, Priority.CLASSIFY_ARP_RESPONDER, where + match, actions,
                       cookie(CookieKind.INFRA)) for where in responder_matches(policy)]
    return flows


def _nd_responders(policy: ResolvedPolicy) -> list[Flow]:
    """Answer neighbour solicitations for IPv6 addresses NAT owns with an advertisement from the
    switch's MAC, out of the asking port: the solicitation turned around in place, as the ARP
    responder turns a request into a reply. Its source link-layer option becomes the target
    option (type 2) whose address ND_ANSWER sets. A solicitation without that option (duplicate
    address detection, from ::) has no room for one: it is not answered."""
    infra = cookie(CookieKind.INFRA)
    mac = mac_int(policy.mac)
    flows = []
    for address in policy.nat_owned_addresses():
        if not isinstance(address, ipaddress.IPv6Address):
            continue
        asked = _nd(ND_SOLICIT) + Match.of(MatchItem("nd_target", int(address)))
        actions = (
            Move("dl_src", "dl_dst"), SetField("dl_src", mac), Move("ipv6_src", "ipv6_dst"),
            SetField("ipv6_src", int(address)), SetField("icmpv6_type", ND_ADVERT),
            SetField("nd_reserved", ND_FLAGS_SOLICITED_OVERRIDE),
            SetField("nd_options_type", ND_OPTION_TARGET_LLADDR), Resubmit(Table.ND_ANSWER),
        )
        for where in responder_matches(policy):
            flows += [Flow(Table.CLASSIFY, Priority.CLASSIFY_ND_RESPONDER, where + asked, actions, infra),
                      Flow(Table.CLASSIFY, Priority.CLASSIFY_ND_UNANSWERED,
                           where + asked + Match.of(MatchItem("nd_sll", 0)), (), infra)]
    if flows:
        flows.append(Flow(Table.ND_ANSWER, Priority.ND_ANSWER, _nd(ND_ADVERT),
                          (SetField("nd_tll", mac), InPort()), infra))
    return flows
