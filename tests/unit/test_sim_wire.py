"""Packets as frames (ovsmgr.sim.wire): what the lab runner sends must read back as the same packet."""

from __future__ import annotations

import struct

import pytest

from ovsmgr.sim.packet import Packet, PacketSpecError, icmp_error_for, parse_packet
from ovsmgr.sim.wire import MIN_FRAME, WireExtras, checksum, decode, encode

A, B = 0x020000000001, 0x020000000002


def spec(text: str) -> Packet:
    return parse_packet(text).replace(dl_src=A, dl_dst=B)


@pytest.mark.parametrize("text", [
    "tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443",
    "tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_src=5,tp_dst=443,tcp_flags=fin|ack",
    "udp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=53",
    "icmp,nw_src=10.0.0.5,nw_dst=198.51.100.9",
    "ip,nw_proto=47,nw_src=10.0.0.5,nw_dst=198.51.100.9",
    "tcp6,ipv6_src=2001:db8::5,ipv6_dst=2001:db8:1::9,tp_dst=22",
    "udp6,ipv6_src=2001:db8::5,ipv6_dst=2001:db8:1::9,tp_dst=53",
    "icmp6,ipv6_src=2001:db8::5,ipv6_dst=2001:db8:1::9",
    "arp,arp_spa=10.0.0.5,arp_tpa=10.0.0.1",
    "arp,arp_op=2,arp_spa=10.0.0.1,arp_tpa=10.0.0.5",
])
def test_a_packet_reads_back_as_itself(text: str) -> None:
    packet = spec(text)
    frame = decode(encode(packet, WireExtras(ident=0x1234, seq=7, ack=9)))
    assert frame.packet == packet.replace(in_port=0)
    if packet.version == 4:
        assert frame.extras.ident == 0x1234
    if packet.nw_proto == 6:
        assert (frame.extras.seq, frame.extras.ack) == (7, 9)


def _ip(text: str, extras: WireExtras | None = None) -> bytes:
    """The IP packet of a frame, without Ethernet padding."""
    body = encode(spec(text), extras)[14:]
    return body[:struct.unpack("!H", body[2:4])[0]]


def test_checksums_are_right() -> None:
    for proto, text in ((17, "udp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=53"),
                        (6, "tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443")):
        ip = _ip(text, WireExtras(payload=b"hi"))
        assert checksum(ip[:20]) == 0
        l4 = ip[20:]
        assert checksum(ip[12:20] + struct.pack("!BBH", 0, proto, len(l4)) + l4) == 0
    assert checksum(_ip("icmp,nw_src=10.0.0.5,nw_dst=198.51.100.9")[20:]) == 0


def test_a_known_ipv4_header_checksum() -> None:
    # RFC 1071 example data
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == (~0xDDF2) & 0xFFFF


def test_short_frames_are_padded_and_arp_sha_is_the_senders() -> None:
    frame = encode(spec("arp,arp_spa=10.0.0.5,arp_tpa=10.0.0.1"))
    assert len(frame) == MIN_FRAME
    assert decode(frame).packet.arp_sha == parse_packet("arp,arp_spa=10.0.0.5,arp_tpa=10.0.0.1").arp_sha


def test_an_icmp_error_quotes_the_packet_and_reads_back_its_inner_packet() -> None:
    sent = spec("udp,nw_src=200.200.200.200,nw_dst=198.51.100.9,tp_src=1024,tp_dst=33434")
    received = decode(encode(sent, WireExtras(ident=77)))
    error = icmp_error_for(received.packet)
    quote = received.l3[:28]
    back = decode(encode(error, WireExtras(quote=quote)))
    assert back.packet.inner == error.inner
    assert back.extras.quote is not None and back.extras.quote.startswith(quote)
    built = decode(encode(error))  # without the received bytes: the quote is built from Inner
    assert built.packet.inner == error.inner


def test_an_echo_reply_keeps_the_request_id() -> None:
    frame = decode(encode(spec("icmp,nw_src=10.0.0.5,nw_dst=198.51.100.9,icmp_type=0"),
                          WireExtras(icmp_id=9, icmp_seq=3)))
    assert (frame.extras.icmp_id, frame.extras.icmp_seq) == (9, 3)


def test_sctp_is_refused() -> None:
    with pytest.raises(PacketSpecError, match="SCTP"):
        encode(spec("sctp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=9"))
