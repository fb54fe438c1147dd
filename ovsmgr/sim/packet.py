"""Packets for the simulator, written the way `ovs-ofctl` writes flows.

`parse_packet("tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443", ports)` gives a
TCP SYN from port 40000; `reply_of` gives the packet the far end answers with, and
`icmp_error_for` an ICMP error about a packet (conntrack calls it +rel).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from ovsmgr.sim.fields import (
    DL_TYPE_ARP,
    DL_TYPE_IP,
    DL_TYPE_IPV6,
    ICMP_PROTOS,
    ND_ADVERT,
    ND_OPTION_SOURCE,
    ND_OPTION_TARGET,
    ND_SOLICIT,
    PACKET_FIELDS,
    PORT_PROTOS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_FLAG_BITS,
    FieldError,
    canonical_name,
    format_value,
    parse_value,
)

SYN, ACK = TCP_FLAG_BITS["syn"], TCP_FLAG_BITS["ack"]
DEFAULT_SOURCE_PORT = 40000
BROADCAST_MAC = 0xFFFF_FFFF_FFFF

_PROTOCOLS: dict[str, tuple[int, int | None]] = {
    "ip": (DL_TYPE_IP, None), "ipv6": (DL_TYPE_IPV6, None), "arp": (DL_TYPE_ARP, None),
    "tcp": (DL_TYPE_IP, PROTO_TCP), "udp": (DL_TYPE_IP, PROTO_UDP), "sctp": (DL_TYPE_IP, PROTO_SCTP),
    "icmp": (DL_TYPE_IP, PROTO_ICMP), "tcp6": (DL_TYPE_IPV6, PROTO_TCP), "udp6": (DL_TYPE_IPV6, PROTO_UDP),
    "sctp6": (DL_TYPE_IPV6, PROTO_SCTP), "icmp6": (DL_TYPE_IPV6, PROTO_ICMPV6),
}
_PROTO_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_SCTP: "sctp", PROTO_ICMP: "icmp", PROTO_ICMPV6: "icmp6"}
_ECHO_REPLIES = {PROTO_ICMP: {8: 0, 13: 14, 15: 16}, PROTO_ICMPV6: {128: 129}}
_INNER_KEYS = ("inner_proto", "inner_src", "inner_dst", "inner_tp_src", "inner_tp_dst")


class PacketSpecError(ValueError):
    """A packet spec the simulator cannot read; the message says what to write instead."""


@dataclass(frozen=True)
class Inner:
    """The packet an ICMP error quotes. For a quoted ICMP packet tp_src/tp_dst hold its type/code."""

    version: int
    nw_proto: int
    src: int
    dst: int
    tp_src: int = 0
    tp_dst: int = 0

    def describe(self) -> str:
        field = "nw" if self.version == 4 else "ipv6"
        name = _PROTO_NAMES.get(self.nw_proto, str(self.nw_proto))
        return (f"{name} {format_value(f'{field}_src', self.src)}:{self.tp_src} > "
                f"{format_value(f'{field}_dst', self.dst)}:{self.tp_dst}")


@dataclass(frozen=True)
class Packet:
    """Header fields of one packet; None means the packet has no such header."""

    in_port: int = 0
    dl_src: int = 0
    dl_dst: int = 0
    vlan_vid: int | None = None
    """0x1000 | VLAN id of a frame with an 802.1Q tag; None (or 0): no tag."""
    dl_type: int = 0
    nw_proto: int | None = None
    nw_src: int | None = None
    nw_dst: int | None = None
    ipv6_src: int | None = None
    ipv6_dst: int | None = None
    tp_src: int | None = None
    tp_dst: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    arp_op: int | None = None
    arp_spa: int | None = None
    arp_tpa: int | None = None
    arp_sha: int | None = None
    arp_tha: int | None = None
    tcp_flags: int | None = None
    nw_frag: int | None = None
    """Set on a fragment (`fields.FRAG_WORDS`). A fragment here stands for its datagram: its
    fields are the datagram's, which conntrack sees (it reassembles); flows see a later
    fragment's L4 fields as 0."""
    nd_target: int | None = None
    nd_sll: int | None = None
    nd_tll: int | None = None
    nd_reserved: int | None = None
    nd_options_type: int | None = None
    inner: Inner | None = None

    def fields(self) -> dict[str, int]:
        """The header fields present, by name (what flows match on)."""
        return {name: value for name in PACKET_FIELDS if (value := getattr(self, name)) is not None}

    @staticmethod
    def from_fields(fields: Mapping[str, int], inner: Inner | None = None) -> Packet:
        return Packet(**{name: fields[name] for name in PACKET_FIELDS if name in fields}, inner=inner)

    def replace(self, **changes: object) -> Packet:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def with_nd_option_type(self, option_type: int) -> Packet:
        """The neighbour discovery message with its link-layer option retyped (the same six bytes
        now a source or a target address), as setting `nd_options_type` does on the wire."""
        mac = self.nd_sll if self.nd_sll is not None else self.nd_tll
        if option_type == ND_OPTION_SOURCE:
            return self.replace(nd_options_type=option_type, nd_sll=mac, nd_tll=None)
        if option_type == ND_OPTION_TARGET:
            return self.replace(nd_options_type=option_type, nd_sll=None, nd_tll=mac)
        return self.replace(nd_options_type=option_type)

    @property
    def version(self) -> int | None:
        return {DL_TYPE_IP: 4, DL_TYPE_IPV6: 6}.get(self.dl_type)

    @property
    def src(self) -> int | None:
        return self.nw_src if self.version == 4 else self.ipv6_src

    @property
    def dst(self) -> int | None:
        return self.nw_dst if self.version == 4 else self.ipv6_dst


# --- parsing -----------------------------------------------------------------------------------
def parse_packet(spec: str, ports: Mapping[str, int] | None = None, in_port: int | str | None = None) -> Packet:
    """Read an ofctl-like packet spec; fill in what a real first packet would carry."""
    ports = ports or {}
    values: dict[str, int] = {}
    inner_text: dict[str, str] = {}
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        if "=" not in token:
            _apply_protocol(token, values)
            continue
        key, _, text = (part.strip() for part in token.partition("="))
        if key in _INNER_KEYS:
            inner_text[key] = text
        elif key == "in_port":
            values["in_port"] = _port_number(text, ports)
        elif key == "dl_vlan":  # a frame tagged with this VLAN
            _apply_field("vlan_vid", str(0x1000 | int(text, 0)), values)
        else:
            _apply_field(key, text, values)
    if in_port is not None:
        values["in_port"] = _port_number(str(in_port), ports)
    _fill_defaults(values, spec)
    inner = _parse_inner(inner_text, values) if inner_text else None
    return Packet.from_fields(values, inner)


def _apply_protocol(word: str, values: dict[str, int]) -> None:
    if word not in _PROTOCOLS:
        raise PacketSpecError(f"unknown protocol {word!r} (known: {', '.join(_PROTOCOLS)})")
    dl_type, proto = _PROTOCOLS[word]
    values["dl_type"] = dl_type
    if proto is not None:
        values["nw_proto"] = proto


def _apply_field(key: str, text: str, values: dict[str, int]) -> None:
    try:
        name = canonical_name(key)
        if name in ("nw_src", "nw_dst") and ":" in text:
            name = name.replace("nw_", "ipv6_")
        if name not in PACKET_FIELDS:
            raise FieldError(f"{key} is pipeline metadata, not a packet field")
        values[name] = parse_value(name, text)
    except FieldError as exc:
        raise PacketSpecError(str(exc)) from None


def _port_number(text: str, ports: Mapping[str, int]) -> int:
    if text in ports:
        return ports[text]
    if text.isdigit():
        return int(text)
    known = ", ".join(sorted(ports)) or "none"
    raise PacketSpecError(f"unknown port {text!r} (ports: {known})")


def _fill_defaults(values: dict[str, int], spec: str) -> None:
    dl_type = values.get("dl_type")
    if dl_type is None:
        raise PacketSpecError(f"{spec!r}: say what the packet is first (tcp, udp, icmp, arp, tcp6, ip, ...)")
    if dl_type == DL_TYPE_ARP:
        _fill_arp(values, spec)
        return
    src, dst = ("nw_src", "nw_dst") if dl_type == DL_TYPE_IP else ("ipv6_src", "ipv6_dst")
    for name in (src, dst):
        if name not in values:
            raise PacketSpecError(f"{spec!r}: needs {name}")
    if "nw_proto" not in values:
        raise PacketSpecError(f"{spec!r}: needs nw_proto (or write tcp, udp, icmp, ...)")
    proto = values["nw_proto"]
    if proto in PORT_PROTOS:
        values.setdefault("tp_src", DEFAULT_SOURCE_PORT)
        if "tp_dst" not in values:
            raise PacketSpecError(f"{spec!r}: needs tp_dst")
    if proto == PROTO_TCP:
        values.setdefault("tcp_flags", SYN)
    if proto in ICMP_PROTOS:
        values.setdefault("icmp_type", 8 if proto == PROTO_ICMP else 128)
        values.setdefault("icmp_code", 0)
    values.setdefault("dl_src", host_mac(values[src]))
    values.setdefault("dl_dst", host_mac(values[dst], 6 if dl_type == DL_TYPE_IPV6 else 4))
    if proto == PROTO_ICMPV6 and values["icmp_type"] in (ND_SOLICIT, ND_ADVERT):
        _fill_nd(values, spec)


def _fill_nd(values: dict[str, int], spec: str) -> None:
    """A neighbour solicitation carries the sender's MAC as its source option (none when it comes
    from ::, duplicate address detection), an advertisement the target's MAC as its target option."""
    if "nd_target" not in values:
        raise PacketSpecError(f"{spec!r}: a neighbour solicitation or advertisement needs nd_target")
    solicit = values["icmp_type"] == ND_SOLICIT
    values.setdefault("nd_reserved", 0 if solicit else 0x6000_0000)
    option = "nd_sll" if solicit else "nd_tll"
    if option not in values and not (solicit and values["ipv6_src"] == 0):
        values[option] = values["dl_src"]
    if option in values:
        values.setdefault("nd_options_type", ND_OPTION_SOURCE if solicit else ND_OPTION_TARGET)


def _fill_arp(values: dict[str, int], spec: str) -> None:
    for name in ("arp_spa", "arp_tpa"):
        if name not in values:
            raise PacketSpecError(f"{spec!r}: needs {name}")
    values.setdefault("arp_op", 1)
    values.setdefault("dl_src", host_mac(values["arp_spa"]))
    values.setdefault("arp_sha", values["dl_src"])
    values.setdefault("arp_tha", 0 if values["arp_op"] == 1 else host_mac(values["arp_tpa"]))
    values.setdefault("dl_dst", BROADCAST_MAC if values["arp_op"] == 1 else values["arp_tha"])


def _parse_inner(text: dict[str, str], outer: dict[str, int]) -> Inner:
    if outer.get("nw_proto") not in ICMP_PROTOS:
        raise PacketSpecError("inner_* fields describe the packet an ICMP error quotes: use them with icmp/icmp6")
    try:
        proto_text = text.get("inner_proto", "tcp")
        proto = _PROTOCOLS[proto_text][1] if proto_text in _PROTOCOLS else int(proto_text)
        src, dst = (ipaddress.ip_address(text[k]) for k in ("inner_src", "inner_dst"))
    except (KeyError, ValueError):
        raise PacketSpecError("an ICMP error's inner packet needs inner_src and inner_dst "
                              "(and inner_proto, inner_tp_src, inner_tp_dst)") from None
    default_sport = DEFAULT_SOURCE_PORT if proto in PORT_PROTOS else 8
    return Inner(src.version, proto or 0, int(src), int(dst),
                 int(text.get("inner_tp_src", default_sport)), int(text.get("inner_tp_dst", 0)))


ALL_NODES = int(ipaddress.IPv6Address("ff02::1"))
ALL_NODES_MAC = 0x3333_0000_0001
ND_OVERRIDE = 0x2000_0000


def announcement(address: int, version: int, mac: int) -> Packet:
    """What a host sends to tell the segment where `address` lives: a gratuitous ARP (as `arping -U`
    sends it), or an unsolicited neighbour advertisement to all nodes (override set)."""
    if version == 4:
        return Packet(dl_src=mac, dl_dst=BROADCAST_MAC, dl_type=DL_TYPE_ARP, arp_op=1, arp_spa=address,
                      arp_tpa=address, arp_sha=mac, arp_tha=BROADCAST_MAC)
    return Packet(dl_src=mac, dl_dst=ALL_NODES_MAC, dl_type=DL_TYPE_IPV6, nw_proto=PROTO_ICMPV6, ipv6_src=address,
                  ipv6_dst=ALL_NODES, icmp_type=ND_ADVERT, icmp_code=0, nd_target=address, nd_reserved=ND_OVERRIDE,
                  nd_tll=mac, nd_options_type=ND_OPTION_TARGET)


def host_mac(address: int, version: int = 4) -> int:
    """A stable locally administered MAC for a host address (MACs never decide a verdict here); for
    an IPv6 multicast address, the Ethernet multicast address it maps to (33:33 and its low 32 bits)."""
    if version == 6 and address >> 120 == 0xFF:
        return 0x3333 << 32 | (address & 0xFFFF_FFFF)
    return (0x02 << 40) | (address & 0xFFFF_FFFF)


# --- printing ----------------------------------------------------------------------------------
def format_packet(packet: Packet, port_names: Mapping[int, str] | None = None, macs: bool = False,
                  in_port: bool = True) -> str:
    """The packet as an ofctl-like spec that `parse_packet` reads back."""
    words = [_protocol_word(packet)]
    for name, value in packet.fields().items():
        if name == "in_port" and not in_port:
            continue
        if (name == "dl_type" and "=" not in words[0]) or (name == "nw_proto" and words[0] not in ("ip", "ipv6")):
            continue
        if name in ("dl_src", "dl_dst", "arp_sha", "arp_tha") and not macs:
            continue
        if name == "in_port":
            words.append(f"in_port={(port_names or {}).get(value, value)}")
            continue
        if name == "vlan_vid":
            words += [f"dl_vlan={value & 0xFFF}"] if value else []
            continue
        words.append(f"{name}={format_value(name, value)}")
    if packet.inner is not None:
        words.extend(_inner_words(packet.inner))
    return ",".join(words)


def _inner_words(inner: Inner) -> list[str]:
    kind = "nw" if inner.version == 4 else "ipv6"
    return [f"inner_proto={_PROTO_NAMES.get(inner.nw_proto, inner.nw_proto)}",
            f"inner_src={format_value(f'{kind}_src', inner.src)}",
            f"inner_dst={format_value(f'{kind}_dst', inner.dst)}",
            f"inner_tp_src={inner.tp_src}", f"inner_tp_dst={inner.tp_dst}"]


def packet_fields(packet: Packet) -> dict[str, str | int]:
    """JSON-friendly fields: addresses and TCP flags as text, the rest as numbers."""
    out: dict[str, str | int] = {}
    for name, value in packet.fields().items():
        text = format_value(name, value)
        out[name] = value if text == str(value) or name in ("dl_type",) else text
    return out


def _protocol_word(packet: Packet) -> str:
    if packet.dl_type == DL_TYPE_ARP:
        return "arp"
    base = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_SCTP: "sctp"}.get(packet.nw_proto or -1)
    if packet.version == 4:
        return base or ("icmp" if packet.nw_proto == PROTO_ICMP else "ip")
    if packet.version == 6:
        return f"{base}6" if base else ("icmp6" if packet.nw_proto == PROTO_ICMPV6 else "ipv6")
    return f"dl_type={packet.dl_type:#06x}"


# --- conversations -----------------------------------------------------------------------------
def reply_of(packet: Packet) -> Packet:
    """What the far end answers: addresses and ports swapped, echo answered, SYN -> SYN+ACK -> ACK."""
    if packet.dl_type == DL_TYPE_ARP:
        return packet.replace(
            dl_src=host_mac(packet.arp_tpa or 0), dl_dst=packet.dl_src, arp_op=2, arp_spa=packet.arp_tpa,
            arp_tpa=packet.arp_spa, arp_sha=host_mac(packet.arp_tpa or 0), arp_tha=packet.arp_sha)
    swapped = packet.replace(
        dl_src=packet.dl_dst, dl_dst=packet.dl_src, nw_src=packet.nw_dst, nw_dst=packet.nw_src,
        ipv6_src=packet.ipv6_dst, ipv6_dst=packet.ipv6_src, tp_src=packet.tp_dst, tp_dst=packet.tp_src)
    if packet.nw_proto in ICMP_PROTOS and packet.icmp_type is not None:
        answers = _ECHO_REPLIES[packet.nw_proto]
        return swapped.replace(icmp_type=answers.get(packet.icmp_type, packet.icmp_type))
    if packet.nw_proto == PROTO_TCP:
        flags = packet.tcp_flags or 0
        return swapped.replace(tcp_flags=SYN | ACK if flags & (SYN | ACK) == SYN else ACK)
    return swapped


def icmp_error_for(packet: Packet, icmp_type: int | None = None, icmp_code: int | None = None,
                   sender: int | None = None) -> Packet:
    """The ICMP error (port unreachable by default) the destination of `packet` sends back about it."""
    version = packet.version
    if version is None or packet.src is None or packet.dst is None:
        raise PacketSpecError("only an IP packet can cause an ICMP error")
    proto = PROTO_ICMP if version == 4 else PROTO_ICMPV6
    quoted_ports = (packet.tp_src or 0, packet.tp_dst or 0)
    if packet.nw_proto in ICMP_PROTOS:
        quoted_ports = (packet.icmp_type or 0, packet.icmp_code or 0)
    inner = Inner(version, packet.nw_proto or 0, packet.src, packet.dst, *quoted_ports)
    src = packet.dst if sender is None else sender
    error = Packet(
        in_port=packet.in_port, dl_src=packet.dl_dst, dl_dst=packet.dl_src, dl_type=packet.dl_type,
        nw_proto=proto, icmp_type=icmp_type if icmp_type is not None else (3 if version == 4 else 1),
        icmp_code=icmp_code if icmp_code is not None else (3 if version == 4 else 4), inner=inner)
    if version == 4:
        return error.replace(nw_src=src, nw_dst=packet.src)
    return error.replace(ipv6_src=src, ipv6_dst=packet.src)
