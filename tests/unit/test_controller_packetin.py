"""Answers to reject rules and log lines, from packets built with os-ken's packet library."""

from __future__ import annotations

import json
import struct

from os_ken.lib.packet import ethernet, icmp, icmpv6, ipv4, ipv6, packet, tcp, udp

from ovsmgr.compiler.pipeline import PacketInKind, packet_in_userdata
from ovsmgr.controller.packetin import (
    TokenBucket,
    in_port_of,
    log_line,
    log_record,
    parse_userdata,
    reject_reply,
)

CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def frame(l4: object, v6: bool = False, proto: int = 6) -> bytes:
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=SERVER_MAC, src=CLIENT_MAC, ethertype=0x86DD if v6 else 0x0800))
    if v6:
        pkt.add_protocol(ipv6.ipv6(src="2001:db8::10", dst="2001:db8::9", nxt=proto))
    else:
        pkt.add_protocol(ipv4.ipv4(src="10.0.0.10", dst="198.51.100.9", proto=proto))
    pkt.add_protocol(l4)
    pkt.serialize()
    return bytes(pkt.data)


def test_userdata_names_kind_and_rule() -> None:
    info = parse_userdata(packet_in_userdata(PacketInKind.REJECT, 0xD675F96C))
    assert info is not None and info.kind is PacketInKind.REJECT and info.rule_id == 0xD675F96C
    assert parse_userdata(b"\x09" + bytes(7)) is None and parse_userdata(None) is None


def test_in_port_is_read_from_oxm_metadata() -> None:
    reg = struct.pack("!I", (0x0001 << 16) | (0 << 9) | 4) + bytes(4)
    port = struct.pack("!I", (0x8000 << 16) | (0 << 9) | 4) + (7).to_bytes(4, "big")
    assert in_port_of(reg + port) == 7
    assert in_port_of(reg) is None


def test_a_syn_is_answered_with_a_rst_ack_of_its_sequence() -> None:
    syn = tcp.tcp(src_port=40000, dst_port=22, seq=1000, bits=tcp.TCP_SYN)
    reply = packet.Packet(reject_reply(frame(syn)))
    eth, ip, seg = reply.get_protocol(ethernet.ethernet), reply.get_protocol(ipv4.ipv4), reply.get_protocol(tcp.tcp)
    assert (eth.src, eth.dst) == (SERVER_MAC, CLIENT_MAC)
    assert (ip.src, ip.dst) == ("198.51.100.9", "10.0.0.10")
    assert (seg.src_port, seg.dst_port, seg.ack, seg.seq) == (22, 40000, 1001, 0)
    assert seg.bits == tcp.TCP_RST | tcp.TCP_ACK


def test_an_ack_gets_a_plain_rst_at_its_ack_number_and_a_rst_gets_nothing() -> None:
    ack = tcp.tcp(src_port=40000, dst_port=22, seq=5, ack=777, bits=tcp.TCP_ACK)
    seg = packet.Packet(reject_reply(frame(ack))).get_protocol(tcp.tcp)
    assert (seg.seq, seg.bits) == (777, tcp.TCP_RST)
    assert reject_reply(frame(tcp.tcp(src_port=1, dst_port=2, bits=tcp.TCP_RST))) is None


def test_udp_gets_port_unreachable_quoting_the_datagram_v4_and_v6() -> None:
    original = frame(udp.udp(src_port=5000, dst_port=53), proto=17)
    reply = packet.Packet(reject_reply(original))
    msg = reply.get_protocol(icmp.icmp)
    assert (msg.type, msg.code) == (icmp.ICMP_DEST_UNREACH, icmp.ICMP_PORT_UNREACH_CODE)
    assert msg.data.data == original[14:14 + 28]
    reply6 = packet.Packet(reject_reply(frame(udp.udp(src_port=5000, dst_port=53), v6=True, proto=17)))
    msg6 = reply6.get_protocol(icmpv6.icmpv6)
    assert (msg6.type_, msg6.code) == (icmpv6.ICMPV6_DST_UNREACH, 4)
    assert reply6.get_protocol(ipv6.ipv6).dst == "2001:db8::10"


def test_icmp_errors_are_never_answered() -> None:
    error = icmp.icmp(type_=icmp.ICMP_DEST_UNREACH, code=3, data=icmp.dest_unreach(data=bytes(28)))
    assert reject_reply(frame(error, proto=1)) is None
    echo = icmp.icmp(type_=icmp.ICMP_ECHO_REQUEST, data=icmp.echo(id_=1, seq=1))
    assert packet.Packet(reject_reply(frame(echo, proto=1))).get_protocol(icmp.icmp).code == 13


def test_log_lines_are_json_with_the_connection() -> None:
    record = log_record(frame(udp.udp(src_port=5000, dst_port=5353), proto=17), "logged", "drop", 1, 4, now=0)
    assert json.loads(log_line(record)) == {
        "time": "1970-01-01T00:00:00", "event": "match", "rule": "logged", "action": "drop", "in_port": 1,
        "src": "10.0.0.10", "dst": "198.51.100.9", "proto": 17, "sport": 5000, "dport": 5353, "suppressed": 4}


def test_token_bucket_allows_bursts_then_the_rate_and_counts_the_rest() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.allow() for _ in range(5)] == [True, True, True, False, False]
    now[0] = 1.0
    assert [bucket.allow() for _ in range(3)] == [True, True, False]
    assert bucket.take_suppressed() == 3 and bucket.suppressed_total == 3 and bucket.take_suppressed() == 0
