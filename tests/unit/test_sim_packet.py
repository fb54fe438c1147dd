"""Packet specs, replies and ICMP errors."""

from __future__ import annotations

import ipaddress

import pytest

from ovsmgr.sim.packet import (
    ACK,
    SYN,
    PacketSpecError,
    format_packet,
    icmp_error_for,
    packet_fields,
    parse_packet,
    reply_of,
)

PORTS = {"inside": 1, "outside": 2}


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def test_a_tcp_spec_gets_the_defaults_of_a_first_packet() -> None:
    p = parse_packet("tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443", PORTS, "inside")
    assert (p.in_port, p.dl_type, p.nw_proto, p.tp_src, p.tp_dst, p.tcp_flags) == (1, 0x800, 6, 40000, 443, SYN)
    assert (p.nw_src, p.nw_dst) == (ip("10.0.0.5"), ip("198.51.100.9"))


def test_icmp_udp_ipv6_and_arp_specs() -> None:
    assert parse_packet("icmp,nw_src=1.1.1.1,nw_dst=2.2.2.2").icmp_type == 8
    assert parse_packet("icmp6,ipv6_src=fd00::1,ipv6_dst=fd00::2").icmp_type == 128
    udp6 = parse_packet("udp6,ipv6_src=fd00::1,ipv6_dst=fd00::2,tp_dst=53")
    assert (udp6.dl_type, udp6.nw_proto, udp6.ipv6_dst) == (0x86DD, 17, ip("fd00::2"))
    arp = parse_packet("arp,arp_spa=10.0.0.5,arp_tpa=10.0.0.1,in_port=outside", PORTS)
    assert (arp.arp_op, arp.dl_dst, arp.in_port) == (1, 0xFFFF_FFFF_FFFF, 2)
    assert parse_packet("ip,nw_proto=47,nw_src=1.1.1.1,nw_dst=2.2.2.2").nw_proto == 47


@pytest.mark.parametrize(("spec", "says"), [
    ("nw_src=1.1.1.1", "say what the packet is"),
    ("tcp,nw_src=1.1.1.1,nw_dst=2.2.2.2", "tp_dst"),
    ("tcp,nw_dst=2.2.2.2,tp_dst=1", "nw_src"),
    ("bogus,nw_src=1.1.1.1", "unknown protocol"),
    ("tcp,nw_src=1.1.1.1,nw_dst=2.2.2.2,tp_dst=1,tcp_flags=nope", "unknown TCP flag"),
    ("tcp,nw_src=1.1.1.1,nw_dst=2.2.2.2,tp_dst=99999", "does not fit"),
    ("tcp,nw_src=1.1.1.1,nw_dst=2.2.2.2,tp_dst=1,in_port=lan", "unknown port"),
    ("tcp,nw_src=1.1.1.1,nw_dst=2.2.2.2,tp_dst=1,reg0=1", "metadata"),
])
def test_bad_specs_say_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(PacketSpecError, match=says):
        parse_packet(spec, PORTS)


def test_reply_swaps_and_answers() -> None:
    syn = parse_packet("tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443")
    synack = reply_of(syn)
    assert (synack.nw_src, synack.tp_src, synack.tp_dst, synack.tcp_flags) == (syn.nw_dst, 443, 40000, SYN | ACK)
    assert reply_of(synack).tcp_flags == ACK
    assert reply_of(parse_packet("icmp,nw_src=1.1.1.1,nw_dst=2.2.2.2")).icmp_type == 0
    arp = reply_of(parse_packet("arp,arp_spa=10.0.0.5,arp_tpa=10.0.0.1"))
    assert (arp.arp_op, arp.arp_spa, arp.arp_tpa) == (2, ip("10.0.0.1"), ip("10.0.0.5"))


def test_icmp_error_quotes_the_packet() -> None:
    udp = parse_packet("udp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=33434")
    error = icmp_error_for(udp)
    assert (error.icmp_type, error.icmp_code, error.nw_src, error.nw_dst) == (3, 3, udp.nw_dst, udp.nw_src)
    assert error.inner is not None and (error.inner.tp_dst, error.inner.nw_proto) == (33434, 17)
    six = icmp_error_for(parse_packet("udp6,ipv6_src=fd00::1,ipv6_dst=fd00::2,tp_dst=1"))
    assert (six.nw_proto, six.icmp_type, six.icmp_code) == (58, 1, 4)


def test_format_reads_back() -> None:
    for spec in ("tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443,tcp_flags=syn|ack",
                 "icmp6,ipv6_src=fd00::1,ipv6_dst=fd00::2",
                 "ip,nw_proto=47,nw_src=1.1.1.1,nw_dst=2.2.2.2"):
        p = parse_packet(spec, PORTS, "inside")
        assert parse_packet(format_packet(p, {1: "inside"}, macs=True), PORTS) == p
    error = icmp_error_for(parse_packet("tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443", PORTS, "inside"))
    assert parse_packet(format_packet(error, macs=True), PORTS) == error


def test_json_fields_are_readable() -> None:
    fields = packet_fields(parse_packet("tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443"))
    assert fields["nw_src"] == "10.0.0.5" and fields["tp_dst"] == 443 and fields["tcp_flags"] == "syn"
