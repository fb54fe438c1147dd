"""The fields the simulator reads and writes: names, widths, and how their values print.

Flows name fields the ofctl way (`nw_src`, `reg3`, `ct_mark`); `move` and learned
flows may also use NXM/OXM names (`NXM_NX_REG3[0..15]`, `OXM_OF_ETH_SRC[]`). Every
name is normalised here to one of `WIDTHS` plus an optional bit slice.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

PACKET_FIELDS = (
    "in_port", "dl_src", "dl_dst", "vlan_vid", "dl_type", "nw_proto", "nw_src", "nw_dst", "ipv6_src", "ipv6_dst",
    "nw_frag", "tp_src", "tp_dst", "icmp_type", "icmp_code", "arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha",
    "tcp_flags", "nd_target", "nd_sll", "nd_tll", "nd_reserved", "nd_options_type",
)
"""Header fields of a packet, in the order they print. `vlan_vid` is OpenFlow's: 0x1000 plus the VLAN
id of a frame with an 802.1Q tag (absent or 0: no tag). The nd_ fields are those of an IPv6
neighbour solicitation or advertisement: its target, its (one) link-layer address option, the
flags word, and the option's type."""

METADATA_FIELDS = ("reg0", "reg1", "reg2", "reg3", "reg4", "reg5", "reg6", "reg7", "conj_id", "ct_state", "ct_zone",
                   "ct_mark", "ct_label", "ct_nw_proto", "ct_tp_src", "ct_tp_dst")
"""Pipeline metadata: registers and conntrack results (the ct_ tuple: the original direction of the
packet's connection, for ICMP its type and code); all start at 0."""
FRAG_ANY, FRAG_LATER = 1, 2
"""`nw_frag` bits: the packet is a fragment; it is not the first one (no L4 header: flows see its
ports, ICMP type and code and TCP flags as 0)."""
L4_FIELDS = frozenset({"tp_src", "tp_dst", "icmp_type", "icmp_code", "tcp_flags"})
FRAG_WORDS = {"no": 0, "first": FRAG_ANY, "later": FRAG_ANY | FRAG_LATER}

WIDTHS: dict[str, int] = {
    "in_port": 32, "vlan_vid": 13, "dl_src": 48, "dl_dst": 48, "dl_type": 16, "nw_proto": 8, "nw_src": 32, "nw_dst": 32,
    "ipv6_src": 128, "ipv6_dst": 128, "tp_src": 16, "tp_dst": 16, "icmp_type": 8, "icmp_code": 8,
    "arp_op": 16, "arp_spa": 32, "arp_tpa": 32, "arp_sha": 48, "arp_tha": 48, "tcp_flags": 12,
    "nd_target": 128, "nd_sll": 48, "nd_tll": 48, "nd_reserved": 32, "nd_options_type": 8,
    "reg0": 32, "reg1": 32, "reg2": 32, "reg3": 32, "reg4": 32, "reg5": 32, "reg6": 32, "reg7": 32, "conj_id": 32, "ct_state": 32,
    "ct_zone": 16, "ct_mark": 32, "ct_label": 128, "ct_nw_proto": 8, "ct_tp_src": 16, "ct_tp_dst": 16, "nw_frag": 2,
}

MAC_FIELDS = frozenset({"dl_src", "dl_dst", "arp_sha", "arp_tha", "nd_sll", "nd_tll"})
IPV4_FIELDS = frozenset({"nw_src", "nw_dst", "arp_spa", "arp_tpa"})
IPV6_FIELDS = frozenset({"ipv6_src", "ipv6_dst", "nd_target"})

DL_TYPE_IP = 0x0800
DL_TYPE_ARP = 0x0806
DL_TYPE_IPV6 = 0x86DD
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, PROTO_SCTP = 1, 6, 17, 58, 132
PORT_PROTOS = frozenset({PROTO_TCP, PROTO_UDP, PROTO_SCTP})
ND_SOLICIT, ND_ADVERT = 135, 136
ND_OPTION_SOURCE, ND_OPTION_TARGET = 1, 2
"""Neighbour discovery: the ICMPv6 types of a solicitation and an advertisement, and the types of
their link-layer address option."""
ICMP_PROTOS = frozenset({PROTO_ICMP, PROTO_ICMPV6})

TCP_FLAG_BITS: dict[str, int] = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20}

_ALIASES = {
    "eth_src": "dl_src", "eth_dst": "dl_dst", "eth_type": "dl_type", "ip_src": "nw_src", "ip_dst": "nw_dst",
    "ipv4_src": "nw_src", "ipv4_dst": "nw_dst", "ip_proto": "nw_proto", "tcp_src": "tp_src",
    "tcp_dst": "tp_dst", "udp_src": "tp_src", "udp_dst": "tp_dst", "sctp_src": "tp_src", "sctp_dst": "tp_dst",
    "icmpv6_type": "icmp_type", "icmpv6_code": "icmp_code", "icmpv4_type": "icmp_type",
    "icmpv4_code": "icmp_code",
}
_SLICE = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(\[(?P<lo>\d*)(\.\.(?P<hi>\d+))?\])?$")


class FieldError(ValueError):
    """A field name or value the simulator does not know."""


@dataclass(frozen=True)
class FieldRef:
    """A field, or bits lo..hi of it (inclusive, like NXM_NX_REG3[0..15])."""

    name: str
    lo: int
    hi: int

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    def read(self, value: int) -> int:
        return (value >> self.lo) & ((1 << self.width) - 1)

    def write(self, old: int, bits: int) -> int:
        mask = ((1 << self.width) - 1) << self.lo
        return (old & ~mask) | ((bits << self.lo) & mask)


def canonical_name(name: str) -> str:
    """`NXM_OF_ETH_SRC` -> `dl_src`, `NXM_NX_REG3` -> `reg3`, `eth_dst` -> `dl_dst`."""
    lowered = name.lower()
    for prefix in ("nxm_of_", "nxm_nx_", "oxm_of_"):
        lowered = lowered.removeprefix(prefix)
    lowered = _ALIASES.get(lowered, lowered)
    if lowered not in WIDTHS:
        raise FieldError(f"unknown field {name!r}")
    return lowered


def field_ref(text: str) -> FieldRef:
    """Parse `reg3`, `reg3[0..15]`, `NXM_NX_REG3[]`, `NXM_NX_REG4[0]` into a `FieldRef`."""
    found = _SLICE.match(text.strip())
    if found is None:
        raise FieldError(f"cannot read field reference {text!r}")
    name = canonical_name(found["name"])
    width = WIDTHS[name]
    if found["lo"] in (None, ""):
        return FieldRef(name, 0, width - 1)
    lo = int(found["lo"])
    hi = int(found["hi"]) if found["hi"] is not None else lo
    if not 0 <= lo <= hi < width:
        raise FieldError(f"bits {lo}..{hi} are outside {name} ({width} bits)")
    return FieldRef(name, lo, hi)


def format_value(name: str, value: int) -> str:
    """A field's value the way ofctl prints it: addresses as addresses, flags by name."""
    if name == "nw_frag":
        return next((word for word, bits in FRAG_WORDS.items() if bits == value), str(value))
    if name in MAC_FIELDS:
        return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))
    if name in IPV4_FIELDS:
        return str(ipaddress.IPv4Address(value))
    if name in IPV6_FIELDS:
        return str(ipaddress.IPv6Address(value))
    if name == "tcp_flags":
        return format_tcp_flags(value)
    if name in ("dl_type", "ct_mark", "ct_label", "ct_state", "vlan_vid") or name.startswith("reg"):
        return hex(value)
    return str(value)


def parse_value(name: str, text: str) -> int:
    """The inverse of `format_value`; numbers may be decimal or 0x-hex."""
    text = text.strip()
    if name == "nw_frag" and text in FRAG_WORDS:
        return FRAG_WORDS[text]
    try:
        if name in MAC_FIELDS:
            return int(text.replace(":", "").replace("-", ""), 16) if len(text) == 17 else _bad(name, text)
        if name in IPV4_FIELDS:
            return int(ipaddress.IPv4Address(text))
        if name in IPV6_FIELDS:
            return int(ipaddress.IPv6Address(text))
        if name == "tcp_flags":
            return parse_tcp_flags(text)
        value = int(text, 0)
    except FieldError:
        raise
    except ValueError:
        return _bad(name, text)
    if not 0 <= value < 1 << WIDTHS[name]:
        raise FieldError(f"{name}={text} does not fit in {WIDTHS[name]} bits")
    return value


def _bad(name: str, text: str) -> int:
    raise FieldError(f"{name}={text!r} is not a valid value")


def format_tcp_flags(value: int) -> str:
    names = [name for name, bit in TCP_FLAG_BITS.items() if value & bit]
    return "|".join(names) if names else "none"


def parse_tcp_flags(text: str) -> int:
    """`syn`, `syn|ack`, `+syn+ack` (ofctl style), `none` or a number."""
    if text and text[0].isdigit():
        return int(text, 0)
    value = 0
    for part in re.split(r"[|+,]", text.lower()):
        if part in ("", "none"):
            continue
        if part not in TCP_FLAG_BITS:
            raise FieldError(f"unknown TCP flag {part!r} (known: {', '.join(TCP_FLAG_BITS)})")
        value |= TCP_FLAG_BITS[part]
    return value
