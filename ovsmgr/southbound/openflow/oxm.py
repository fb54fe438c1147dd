"""Match fields on the wire: ovsmgr's `Match` to OXM TLVs and back, as Open vSwitch writes them.

Open vSwitch answers a flow-statistics request with each flow's match in its own
canonical form: fields in a fixed order (`nx_put_raw` in OVS's lib/nx-match.c),
the OXM header where OpenFlow 1.4 has one and the Nicira (NXM) header where it
has not, no mask where the mask is all ones. `encode_match` writes exactly that
form, so a flow read back from the switch compares equal to the compiled one
byte for byte (tests/integration/test_openflow_wire.py holds it to that on every
example policy); `decode_match` reads any order and either header, so a flow
written by someone else still decodes.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from ovsmgr.compiler.flows import Match, MatchItem

OXM_OF = 0x8000
NXM_OF = 0x0000
NXM_NX = 0x0001
EXPERIMENTER = 0xFFFF
ERICSSON = 0x1000
"""The OXM class of the neighbour discovery fields Ericsson added to Open vSwitch (ERICOXM_OF_)."""
ONF_EXPERIMENTER_ID = 0x4F4E4600

ETH_IP, ETH_ARP, ETH_IPV6 = 0x0800, 0x0806, 0x86DD
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, PROTO_SCTP = 1, 6, 17, 58, 132


class MatchDecodeError(ValueError):
    """A match field ovsmgr's model has no name for (a flow somebody else wrote)."""


@dataclass(frozen=True)
class Header:
    """One field's OXM/NXM header: class, field number, value width in bytes."""

    oxm_class: int
    field: int
    width: int

    def pack(self, masked: bool) -> bytes:
        experimenter = self.oxm_class == EXPERIMENTER
        length = self.width * (2 if masked else 1) + (4 if experimenter else 0)
        head = struct.pack("!HBB", self.oxm_class, self.field << 1 | masked, length)
        return head + struct.pack("!I", ONF_EXPERIMENTER_ID) if experimenter else head


def _oxm(field: int, width: int) -> Header:
    return Header(OXM_OF, field, width)


def _nx(field: int, width: int) -> Header:
    return Header(NXM_NX, field, width)


# The header Open vSwitch 3.1 writes for each field in OpenFlow 1.4 (mf_oxm_header()).
HEADERS: dict[str, Header] = {
    "conj_id": _nx(37, 4),
    "in_port": _oxm(0, 4),
    "dl_src": _oxm(4, 6),
    "dl_dst": _oxm(3, 6),
    "dl_type": _oxm(5, 2),
    "vlan_vid": _oxm(6, 2),
    "nw_src": _oxm(11, 4),
    "nw_dst": _oxm(12, 4),
    "ipv6_src": _oxm(26, 16),
    "ipv6_dst": _oxm(27, 16),
    "nw_proto": _oxm(10, 1),
    "tcp_src": _oxm(13, 2),
    "tcp_dst": _oxm(14, 2),
    "tcp_flags": Header(EXPERIMENTER, 42, 2),
    "udp_src": _oxm(15, 2),
    "udp_dst": _oxm(16, 2),
    "sctp_src": _oxm(17, 2),
    "sctp_dst": _oxm(18, 2),
    "icmpv4_type": _oxm(19, 1),
    "icmpv4_code": _oxm(20, 1),
    "icmpv6_type": _oxm(29, 1),
    "icmpv6_code": _oxm(30, 1),
    "arp_op": _oxm(21, 2),
    "arp_spa": _oxm(22, 4),
    "arp_tpa": _oxm(23, 4),
    "arp_sha": _oxm(24, 6),
    "arp_tha": _oxm(25, 6),
    "nd_target": _oxm(31, 16),
    "nd_sll": _oxm(32, 6),
    "nd_tll": _oxm(33, 6),
    "nd_reserved": Header(ERICSSON, 1, 4),
    "nd_options_type": Header(ERICSSON, 2, 1),
    **{f"reg{i}": _nx(i, 4) for i in range(16)},
    "ct_state": _nx(105, 4),
    "ct_zone": _nx(106, 2),
    "ct_mark": _nx(107, 4),
    "ct_label": _nx(108, 16),
    "nw_frag": _nx(26, 1),
    "ct_nw_proto": _nx(119, 1),
    "ct_tp_src": _nx(124, 2),
    "ct_tp_dst": _nx(125, 2),
}

# Headers a match may arrive with: the above, plus the NXM spellings of OXM fields and OF1.5's.
_WIRE_NAMES: dict[tuple[int, int], str] = {(h.oxm_class, h.field): n for n, h in HEADERS.items()}
_WIRE_NAMES.update({
    (NXM_OF, 0): "in_port", (NXM_OF, 1): "dl_dst", (NXM_OF, 2): "dl_src", (NXM_OF, 3): "dl_type",
    (NXM_OF, 6): "nw_proto", (NXM_OF, 7): "nw_src", (NXM_OF, 8): "nw_dst", (NXM_OF, 9): "tcp_src",
    (NXM_OF, 10): "tcp_dst", (NXM_OF, 11): "udp_src", (NXM_OF, 12): "udp_dst", (NXM_OF, 13): "icmpv4_type",
    (NXM_OF, 14): "icmpv4_code", (NXM_OF, 15): "arp_op", (NXM_OF, 16): "arp_spa", (NXM_OF, 17): "arp_tpa",
    (NXM_NX, 17): "arp_sha", (NXM_NX, 18): "arp_tha", (NXM_NX, 19): "ipv6_src", (NXM_NX, 20): "ipv6_dst",
    (NXM_NX, 21): "icmpv6_type", (NXM_NX, 22): "icmpv6_code", (NXM_NX, 23): "nd_target",
    (NXM_NX, 24): "nd_sll", (NXM_NX, 25): "nd_tll", (NXM_NX, 34): "tcp_flags",
    (OXM_OF, 42): "tcp_flags",
})
_PACKET_TYPE = (OXM_OF, 44)
"""Open vSwitch's packet_type; ethernet (0) is what every ovsmgr flow matches, so it is dropped."""

_L4_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_SCTP: "sctp"}
_MODEL_NAME = {"tcp_src": "tp_src", "tcp_dst": "tp_dst", "udp_src": "tp_src", "udp_dst": "tp_dst",
               "sctp_src": "tp_src", "sctp_dst": "tp_dst", "icmpv4_type": "icmp_type",
               "icmpv4_code": "icmp_code", "icmpv6_type": "icmp_type", "icmpv6_code": "icmp_code"}
_REGS = tuple(f"reg{i}" for i in range(16))


def _wire_name(name: str, dl_type: int | None, nw_proto: int | None) -> str:
    """The wire field behind a model field: tp_src is tcp_src, udp_src or sctp_src by protocol."""
    if name in ("tp_src", "tp_dst"):
        l4 = _L4_NAMES.get(nw_proto or -1)
        if l4 is None:
            raise ValueError(f"{name} needs nw_proto tcp, udp or sctp")
        return f"{l4}{name[2:]}"
    if name in ("icmp_type", "icmp_code"):
        return f"icmpv6{name[4:]}" if dl_type == ETH_IPV6 else f"icmpv4{name[4:]}"
    return name


_OVS_RANK: dict[str, int] = {name: i for i, name in enumerate((
    "conj_id", "in_port", "dl_src", "dl_dst", "dl_type", "vlan_vid",
    "nw_src", "nw_dst", "ipv6_src", "ipv6_dst", "nw_frag", "nw_proto", "tp_src", "tp_dst", "tcp_flags", "icmp_type",
    "icmp_code", "nd_target", "nd_sll", "arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha",
    *_REGS, "ct_state", "ct_zone", "ct_mark", "ct_label", "ct_nw_proto", "ct_tp_src", "ct_tp_dst",
))}
"""Open vSwitch's order (nx_put_raw): conj_id, in_port, Ethernet, L3, L4, ARP, registers, conntrack.
IP and ARP fields never meet in one valid match, so one order serves both."""
_L3 = frozenset(("nw_src", "nw_dst", "ipv6_src", "ipv6_dst", "nw_frag", "nw_proto", "tp_src", "tp_dst", "tcp_flags",
                 "icmp_type", "icmp_code", "nd_target", "nd_sll"))
_ARP = frozenset(("arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha"))


@functools.lru_cache(maxsize=1 << 17)
def _tlv(item: MatchItem, dl_type: int | None, nw_proto: int | None) -> bytes:
    """One field's TLV: a policy's flows share most of theirs (zones, protocols, states)."""
    if (item.field in _L3 and dl_type not in (ETH_IP, ETH_IPV6)) or (item.field in _ARP and dl_type != ETH_ARP):
        raise ValueError(f"match field {item.field} needs a protocol the match does not name")
    header = HEADERS[_wire_name(item.field, dl_type, nw_proto)]
    width = header.width
    if item.mask is None:
        return header.pack(False) + item.value.to_bytes(width, "big")
    return header.pack(True) + (item.value & item.mask).to_bytes(width, "big") + item.mask.to_bytes(width, "big")


def encode_match(match: Match) -> bytes:
    """The match's OXM fields (no `ofp_match` header, no padding), in Open vSwitch's canonical form."""
    dl_type = nw_proto = None
    for item in match.items:
        if item.field == "dl_type":
            dl_type = item.value
        elif item.field == "nw_proto":
            nw_proto = item.value
    rank = _OVS_RANK
    ordered = sorted(match.items, key=lambda i: rank[i.field])
    return b"".join([_tlv(item, dl_type, nw_proto) for item in ordered])


def decode_match(data: bytes | memoryview) -> Match:
    """OXM/NXM TLVs (any order, either header) back to a `Match`; raises `MatchDecodeError`."""
    items: list[MatchItem] = []
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 4:
            raise MatchDecodeError("truncated match field header")
        oxm_class, field_mask, length = struct.unpack_from("!HBB", data, offset)
        field, masked = field_mask >> 1, field_mask & 1
        body = offset + 4
        if oxm_class == EXPERIMENTER:
            body += 4
            length -= 4
        width = length // 2 if masked else length
        if body + length > end:
            raise MatchDecodeError("truncated match field")
        offset = body + length
        if (oxm_class, field) == _PACKET_TYPE and not masked and int.from_bytes(data[body:body + 4], "big") == 0:
            continue
        name = _WIRE_NAMES.get((oxm_class, field))
        if name is None:
            raise MatchDecodeError(f"match field class {oxm_class:#06x} field {field}")
        value = int.from_bytes(data[body:body + width], "big")
        mask = int.from_bytes(data[body + width:body + 2 * width], "big") if masked else None
        items.append(MatchItem(_MODEL_NAME.get(name, name), value, mask))
    return Match.of(*items)
