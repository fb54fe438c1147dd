"""Building blocks of matches: families, prefixes, port ranges as value/mask, services."""

from __future__ import annotations

from ovsmgr.compiler.flows import Match, MatchItem
from ovsmgr.compiler.pipeline import CT_STATE_BITS, RegField
from ovsmgr.policy.ir import IP_PROTO_NUMBERS, IPNetwork, Service

ETH_IP = 0x0800
ETH_IPV6 = 0x86DD
ETH_ARP = 0x0806
DL_TYPE = {4: ETH_IP, 6: ETH_IPV6}


def family(version: int) -> Match:
    return Match.of(MatchItem("dl_type", DL_TYPE[version]))


def reg(field: RegField, value: int, mask: int | None = None) -> MatchItem:
    return MatchItem(field.reg, value, mask)


def ct_state(flags: str) -> MatchItem:
    """`+trk+est-rpl` style flags as a value/mask item."""
    value = mask = 0
    for token in flags.replace("+", " +").replace("-", " -").split():
        bit = CT_STATE_BITS[token[1:]]
        mask |= bit
        if token[0] == "+":
            value |= bit
    return MatchItem("ct_state", value, mask)


def prefix(field: str, network: IPNetwork) -> MatchItem:
    """`nw_src`/`nw_dst` (IPv4) or `ipv6_src`/`ipv6_dst`, picked by the network's version."""
    name = field if network.version == 4 else field.replace("nw_", "ipv6_")
    bits = network.max_prefixlen
    mask = None if network.prefixlen == bits else int(network.netmask)
    return MatchItem(name, int(network.network_address), mask)


def port_masks(lo: int, hi: int, width: int = 16) -> list[tuple[int, int | None]]:
    """The fewest value/mask pairs that match exactly the ports lo..hi (None: exact value)."""
    full = (1 << width) - 1
    out: list[tuple[int, int | None]] = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << width
        while size > hi - lo + 1:
            size >>= 1
        mask = full & ~(size - 1)
        out.append((lo, None if mask == full else mask))
        lo += size
    return out


TRACKED_VALID = ct_state("+trk-inv")
"""What a flow that matches the conntrack tuple (`ct_nw_proto`, `ct_tp_*`) must also match: OVS
refuses those fields on a flow that does not say the packet is tracked and valid."""


def service_matches(service: Service) -> list[Match]:
    """Matches for one service item (several when a port range needs masks), without the IP family
    and `TRACKED_VALID` (the rule's base match carries them), so a service match adds only fields
    ranked after them.

    A service is matched on the connection's original-direction tuple from conntrack, not on the
    packet's own L4 fields: every fragment of a datagram carries the tuple of the whole datagram
    (OVS's userspace conntrack reassembles to track, then forwards the fragments, each with the
    datagram's tuple; the kernel's ct() forwards the reassembled datagram), while only the first
    fragment has ports. So all fragments of a datagram take the same way through FILTER and NAT.
    For ICMP the tuple's source port is the type and its destination port the code."""
    proto = _PROTO_ITEMS[service.proto]
    if service.ports is not None:
        lo, hi = service.ports
        if lo == hi:
            return [Match((proto, MatchItem("ct_tp_dst", lo)))]
        if (lo, hi) == (1, 65535):
            return [Match((proto,))]
        return [Match((proto, MatchItem("ct_tp_dst", v, m))) for v, m in port_masks(lo, hi)]
    items = [proto]
    if service.icmp_type is not None:
        items.append(MatchItem("ct_tp_src", service.icmp_type))
    if service.icmp_code is not None:
        items.append(MatchItem("ct_tp_dst", service.icmp_code))
    return [Match(tuple(items))]


_PROTO_ITEMS = {name: MatchItem("ct_nw_proto", number) for name, number in IP_PROTO_NUMBERS.items()}
