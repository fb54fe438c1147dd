"""Simulator packets as Ethernet frames, and frames read back as packets.

The lab scenario runner (`ovsmgr.lab.scenarios`) sends a step's packet as a real
frame into a lab switch and reads what the other hosts receive; this module is
the pure half of that: `encode(packet, extras)` gives the bytes, `decode(frame)`
the `Packet` again (with the ICMP error's quoted packet as `Inner`).

A `Packet` holds only what flows match on; a frame needs a little more, which
`WireExtras` carries: the IPv4 identification (IPv6 flow label) the runner marks
each step's frames with (NAT keeps it, so a frame that arrives is known by it),
TCP sequence numbers (OVS conntrack checks them), the ICMP echo id, and for an
ICMP error the bytes it quotes. IPv4, IPv6, ARP, TCP, UDP, ICMP and ICMPv6;
SCTP needs a CRC32c this module does not compute, so it is refused.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ovsmgr.sim.fields import (
    DL_TYPE_ARP,
    DL_TYPE_IP,
    DL_TYPE_IPV6,
    ND_ADVERT,
    ND_OPTION_SOURCE,
    ND_OPTION_TARGET,
    ND_SOLICIT,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
)
from ovsmgr.sim.packet import Inner, Packet, PacketSpecError

MIN_FRAME = 60
"""Ethernet's minimum frame size without the FCS; shorter frames are padded."""
ECHO_ID = 0x0F5A
_ICMP_ERRORS = {PROTO_ICMP: frozenset({3, 4, 5, 11, 12}), PROTO_ICMPV6: frozenset({1, 2, 3, 4})}
_ECHO_TYPES = {PROTO_ICMP: frozenset({0, 8, 13, 14, 15, 16}), PROTO_ICMPV6: frozenset({128, 129})}
_ECHO_DATA = b"ovsmgr-lab-probe"


@dataclass(frozen=True)
class WireExtras:
    """Header fields a frame needs that flows never match on."""

    ident: int = 0
    """IPv4 identification (16 bits) or IPv6 flow label (20 bits)."""
    seq: int = 0
    ack: int = 0
    icmp_id: int = ECHO_ID
    icmp_seq: int = 0
    quote: bytes | None = None
    """What an ICMP error quotes (the offending packet's IP header and 8 bytes); None: built
    from `Packet.inner`."""
    payload: bytes = b""
    """TCP or UDP data."""


@dataclass(frozen=True)
class Frame:
    """A frame read back: the packet, its extras, and its IP header and payload as sent."""

    packet: Packet
    extras: WireExtras
    l3: bytes = b""


# --- checksums ---------------------------------------------------------------------------------
ETH_TYPE_VLAN = 0x8100


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo_header(version: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if version == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


# --- encoding ----------------------------------------------------------------------------------
def encode(packet: Packet, extras: WireExtras | None = None) -> bytes:
    """The Ethernet frame of `packet`, with correct lengths and checksums."""
    extras = extras or WireExtras()
    if packet.dl_type == DL_TYPE_ARP:
        body = _arp(packet)
    elif packet.version is not None:
        body = _ip(packet, extras)
    else:
        raise PacketSpecError(f"cannot put dl_type {packet.dl_type:#06x} on the wire")
    tag = struct.pack("!HH", ETH_TYPE_VLAN, packet.vlan_vid & 0xFFF) if packet.vlan_vid else b""
    frame = _mac(packet.dl_dst) + _mac(packet.dl_src) + tag + struct.pack("!H", packet.dl_type) + body
    return frame.ljust(MIN_FRAME, b"\0")


def _mac(value: int) -> bytes:
    return value.to_bytes(6, "big")


def _arp(packet: Packet) -> bytes:
    return struct.pack("!HHBBH", 1, DL_TYPE_IP, 6, 4, packet.arp_op or 1) + _mac(packet.arp_sha or 0) + \
        (packet.arp_spa or 0).to_bytes(4, "big") + _mac(packet.arp_tha or 0) + \
        (packet.arp_tpa or 0).to_bytes(4, "big")


def _ip(packet: Packet, extras: WireExtras) -> bytes:
    version = packet.version or 4
    width = 4 if version == 4 else 16
    src, dst = (packet.src or 0).to_bytes(width, "big"), (packet.dst or 0).to_bytes(width, "big")
    proto = packet.nw_proto or 0
    l4 = _l4(packet, extras, version, src, dst)
    if version == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), extras.ident & 0xFFFF, 0x4000, 64,
                             proto, 0, src, dst)
        return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + l4
    first = (6 << 28) | (extras.ident & 0xFFFFF)
    hops = 255 if _is_nd(packet) else 64  # neighbour discovery from anything else is refused
    return struct.pack("!IHBB", first, len(l4), proto, hops) + src + dst + l4


def _is_nd(packet: Packet) -> bool:
    return packet.nw_proto == PROTO_ICMPV6 and packet.icmp_type in (ND_SOLICIT, ND_ADVERT)


def _l4(packet: Packet, extras: WireExtras, version: int, src: bytes, dst: bytes) -> bytes:
    proto = packet.nw_proto
    if proto == PROTO_TCP:
        flags = packet.tcp_flags or 0
        header = struct.pack("!HHIIHHHH", packet.tp_src or 0, packet.tp_dst or 0, extras.seq & 0xFFFFFFFF,
                             extras.ack & 0xFFFFFFFF, (5 << 12) | (flags & 0x1FF), 65535, 0, 0)
        segment = header + extras.payload
        return _with_checksum(segment, 16, _pseudo_header(version, src, dst, proto, len(segment)))
    if proto == PROTO_UDP:
        datagram = struct.pack("!HHHH", packet.tp_src or 0, packet.tp_dst or 0, 8 + len(extras.payload), 0) \
            + extras.payload
        return _with_checksum(datagram, 6, _pseudo_header(version, src, dst, proto, len(datagram)),
                              zero_means_none=True)
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        message = _icmp(packet, extras, proto)
        pseudo = b"" if proto == PROTO_ICMP else _pseudo_header(6, src, dst, proto, len(message))
        return _with_checksum(message, 2, pseudo)
    if proto == PROTO_SCTP:
        raise PacketSpecError("SCTP frames need a CRC32c: the lab runner does not send SCTP")
    return extras.payload


def _with_checksum(data: bytes, offset: int, pseudo: bytes, zero_means_none: bool = False) -> bytes:
    value = checksum(pseudo + data)
    if zero_means_none and value == 0:
        value = 0xFFFF  # UDP sends a computed 0 as all ones
    return data[:offset] + struct.pack("!H", value) + data[offset + 2:]


def _icmp(packet: Packet, extras: WireExtras, proto: int) -> bytes:
    kind, code = packet.icmp_type or 0, packet.icmp_code or 0
    if kind in _ICMP_ERRORS[proto]:
        quote = extras.quote if extras.quote is not None else _quoted(packet.inner)
        return struct.pack("!BBHI", kind, code, 0, 0) + quote
    if kind in _ECHO_TYPES[proto]:
        return struct.pack("!BBHHH", kind, code, 0, extras.icmp_id, extras.icmp_seq) + _ECHO_DATA
    if _is_nd(packet):
        message = struct.pack("!BBHI", kind, code, 0, packet.nd_reserved or 0) + (packet.nd_target or 0).to_bytes(16, "big")
        mac = packet.nd_sll if packet.nd_sll is not None else packet.nd_tll
        if mac is not None:
            option = packet.nd_options_type or (ND_OPTION_SOURCE if packet.nd_sll is not None else ND_OPTION_TARGET)
            message += struct.pack("!BB", option, 1) + _mac(mac)
        return message
    return struct.pack("!BBHI", kind, code, 0, 0)


def _quoted(inner: Inner | None) -> bytes:
    """An ICMP error's quote built from the `Inner` fields: IP header and the first 8 bytes."""
    if inner is None:
        raise PacketSpecError("an ICMP error needs the packet it quotes (inner_src, inner_dst, ...)")
    quoted = Packet(dl_type=DL_TYPE_IP if inner.version == 4 else DL_TYPE_IPV6, nw_proto=inner.nw_proto,
                    tp_src=inner.tp_src, tp_dst=inner.tp_dst, tcp_flags=0x02)
    if inner.version == 4:
        quoted = quoted.replace(nw_src=inner.src, nw_dst=inner.dst)
    else:
        quoted = quoted.replace(ipv6_src=inner.src, ipv6_dst=inner.dst)
    if inner.nw_proto in (PROTO_ICMP, PROTO_ICMPV6):
        quoted = quoted.replace(icmp_type=inner.tp_src, icmp_code=inner.tp_dst, tp_src=None, tp_dst=None)
    ip = _ip(quoted, WireExtras())
    header = 20 if inner.version == 4 else 40
    return ip[:header + 8]


# --- decoding ----------------------------------------------------------------------------------
def decode(frame: bytes, in_port: int = 0) -> Frame:
    """Read a frame back; raises ValueError for a frame too short for its headers."""
    if len(frame) < 14:
        raise ValueError("frame shorter than an Ethernet header")
    dl_dst, dl_src = int.from_bytes(frame[:6], "big"), int.from_bytes(frame[6:12], "big")
    (dl_type,) = struct.unpack("!H", frame[12:14])
    vlan_vid, body = None, frame[14:]
    if dl_type == ETH_TYPE_VLAN and len(frame) >= 18:  # an 802.1Q tag: its VLAN id, then the real type
        tci, dl_type = struct.unpack("!HH", frame[14:18])
        vlan_vid, body = 0x1000 | (tci & 0xFFF), frame[18:]
    packet = Packet(in_port=in_port, dl_src=dl_src, dl_dst=dl_dst, vlan_vid=vlan_vid, dl_type=dl_type)
    if dl_type == DL_TYPE_ARP:
        return Frame(_decode_arp(packet, body), WireExtras())
    if dl_type in (DL_TYPE_IP, DL_TYPE_IPV6):
        return _decode_ip(packet, body)
    return Frame(packet, WireExtras())


def _decode_arp(packet: Packet, body: bytes) -> Packet:
    if len(body) < 28:
        raise ValueError("truncated ARP")
    op = struct.unpack("!H", body[6:8])[0]
    return packet.replace(arp_op=op, arp_sha=int.from_bytes(body[8:14], "big"),
                          arp_spa=int.from_bytes(body[14:18], "big"), arp_tha=int.from_bytes(body[18:24], "big"),
                          arp_tpa=int.from_bytes(body[24:28], "big"))


def _decode_ip(packet: Packet, body: bytes) -> Frame:
    version, proto, src, dst, ident, header, total = _ip_header(body)
    l3 = body[:total]
    packet = packet.replace(nw_proto=proto)
    if version == 4:
        packet = packet.replace(nw_src=src, nw_dst=dst)
    else:
        packet = packet.replace(ipv6_src=src, ipv6_dst=dst)
    packet, extras = _decode_l4(packet, proto, l3[header:])
    return Frame(packet, WireExtras(ident=ident, seq=extras.seq, ack=extras.ack, icmp_id=extras.icmp_id,
                                    icmp_seq=extras.icmp_seq, quote=extras.quote, payload=extras.payload), l3)


def _ip_header(body: bytes) -> tuple[int, int, int, int, int, int, int]:
    """(version, proto, src, dst, ident, header length, total length) of an IP packet."""
    if len(body) < 20:
        raise ValueError("truncated IP header")
    version = body[0] >> 4
    if version == 4:
        header = (body[0] & 0x0F) * 4
        total, ident = struct.unpack("!HH", body[2:6])
        return (4, body[9], int.from_bytes(body[12:16], "big"), int.from_bytes(body[16:20], "big"), ident,
                header, min(total, len(body)))
    if len(body) < 40:
        raise ValueError("truncated IPv6 header")
    first, length, proto = struct.unpack("!IHB", body[:7])
    return (6, proto, int.from_bytes(body[8:24], "big"), int.from_bytes(body[24:40], "big"), first & 0xFFFFF,
            40, min(40 + length, len(body)))


def _decode_l4(packet: Packet, proto: int, l4: bytes) -> tuple[Packet, WireExtras]:
    if proto == PROTO_TCP and len(l4) >= 20:
        sport, dport, seq, ack, offset_flags = struct.unpack("!HHIIH", l4[:14])
        data = l4[(offset_flags >> 12) * 4:]
        return (packet.replace(tp_src=sport, tp_dst=dport, tcp_flags=offset_flags & 0x1FF),
                WireExtras(seq=seq, ack=ack, payload=data))
    if proto == PROTO_UDP and len(l4) >= 8:
        sport, dport = struct.unpack("!HH", l4[:4])
        return packet.replace(tp_src=sport, tp_dst=dport), WireExtras(payload=l4[8:])
    if proto in (PROTO_ICMP, PROTO_ICMPV6) and len(l4) >= 8:
        kind, code = l4[0], l4[1]
        packet = packet.replace(icmp_type=kind, icmp_code=code)
        if kind in _ICMP_ERRORS[proto]:
            return packet.replace(inner=_decode_inner(l4[8:])), WireExtras(quote=l4[8:])
        if _is_nd(packet) and len(l4) >= 24:
            return _decode_nd(packet, l4), WireExtras()
        icmp_id, icmp_seq = struct.unpack("!HH", l4[4:8])
        return packet, WireExtras(icmp_id=icmp_id, icmp_seq=icmp_seq)
    return packet, WireExtras(payload=l4)


def _decode_nd(packet: Packet, l4: bytes) -> Packet:
    """A solicitation or advertisement: its flags word, target and first link-layer address option."""
    packet = packet.replace(nd_reserved=struct.unpack("!I", l4[4:8])[0], nd_target=int.from_bytes(l4[8:24], "big"))
    if len(l4) >= 32 and l4[25] == 1 and l4[24] in (ND_OPTION_SOURCE, ND_OPTION_TARGET):
        mac = int.from_bytes(l4[26:32], "big")
        field = "nd_sll" if l4[24] == ND_OPTION_SOURCE else "nd_tll"
        packet = packet.replace(nd_options_type=l4[24], **{field: mac})
    return packet


def _decode_inner(quote: bytes) -> Inner | None:
    try:
        version, proto, src, dst, _, header, _ = _ip_header(quote)
    except ValueError:
        return None
    ports = quote[header:header + 4]
    if len(ports) < 4:
        return Inner(version, proto, src, dst, 0, 0)
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        return Inner(version, proto, src, dst, ports[0], ports[1])
    sport, dport = struct.unpack("!HH", ports)
    return Inner(version, proto, src, dst, sport, dport)


def describe_address(value: int, version: int) -> str:
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))
