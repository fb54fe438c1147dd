"""The conntrack model alone: states, directions, marks, zones, NAT, related ICMP, limits."""

from __future__ import annotations

import ipaddress

import pytest

from ovsmgr.compiler.flows import NatSpec
from ovsmgr.sim.conntrack import (
    DNAT,
    EST,
    INV,
    NEW,
    REL,
    RPL,
    SNAT,
    TRK,
    Conntrack,
    CtCache,
    CtRequest,
    format_ct_state,
    run_ct,
)
from ovsmgr.sim.packet import icmp_error_for, parse_packet, reply_of

PORTS = {"inside": 1, "outside": 2}


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def packet(spec: str, port: str = "inside"):  # type: ignore[no-untyped-def]
    return parse_packet(spec, PORTS, port)


SYN = packet("tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443")
SNAT_TO = NatSpec("src", ip("200.200.200.200"), ip("200.200.200.200"), 4)


def commit(p=SYN, zone: int = 1, **kwargs: object):  # type: ignore[no-untyped-def]
    return run_ct(Conntrack(), p, CtRequest(zone=zone, commit=True, **kwargs))  # type: ignore[arg-type]


def test_an_uncommitted_connection_stays_new() -> None:
    first = run_ct(Conntrack(), SYN, CtRequest(zone=1))
    again = run_ct(first.conntrack, SYN, CtRequest(zone=1))
    assert first.state == again.state == TRK | NEW
    assert again.conntrack.connections == ()


def test_a_committed_connection_is_established_both_ways() -> None:
    committed = commit()
    later = run_ct(committed.conntrack, SYN.replace(tcp_flags=0x10), CtRequest(zone=1))
    reply = run_ct(committed.conntrack, reply_of(SYN), CtRequest(zone=1))
    assert committed.state == TRK | NEW
    assert later.state == TRK | EST
    assert reply.state == TRK | EST | RPL
    assert reply.conntrack.connections[0].seen_reply


# What OVS 3.1 userspace conntrack said for a first packet with these flags (lab switch, ct_state
# flows counting hits): tcp_valid_new refuses a SYN+ACK and flags no stack sends, nothing else.
@pytest.mark.parametrize("flags", ["syn|ack", "syn|rst", "syn|fin", "fin", "psh", "none"])
def test_tcp_that_cannot_start_a_connection_is_invalid(flags: str) -> None:
    stray = packet(f"tcp,nw_src=198.51.100.9,nw_dst=10.0.0.5,tp_src=443,tp_dst=40000,tcp_flags={flags}")
    result = run_ct(Conntrack(), stray, CtRequest(zone=1, commit=True))
    assert result.state == TRK | INV
    assert result.conntrack.connections == ()


@pytest.mark.parametrize("flags", ["ack", "rst", "rst|ack", "fin|ack", "psh|ack"])
def test_tcp_without_syn_is_picked_up_mid_stream_as_new(flags: str) -> None:
    stray = packet(f"tcp,nw_src=198.51.100.9,nw_dst=10.0.0.5,tp_src=443,tp_dst=40000,tcp_flags={flags}")
    result = run_ct(Conntrack(), stray, CtRequest(zone=1, commit=True))
    assert result.state == TRK | NEW
    assert len(result.conntrack.connections) == 1


def test_invalid_tcp_flags_are_invalid_on_a_connection_too() -> None:
    committed = commit()
    assert run_ct(committed.conntrack, SYN.replace(tcp_flags=0x01), CtRequest(zone=1)).state == TRK | INV


def test_icmp_echo_reply_matches_the_request_but_a_request_back_is_new() -> None:
    ping = packet("icmp,nw_src=10.0.0.5,nw_dst=198.51.100.9")
    committed = commit(ping)
    assert run_ct(committed.conntrack, reply_of(ping), CtRequest(zone=1)).state == TRK | EST | RPL
    ping_back = packet("icmp,nw_src=198.51.100.9,nw_dst=10.0.0.5", "outside")
    assert run_ct(committed.conntrack, ping_back, CtRequest(zone=1)).state == TRK | NEW
    stray_reply = packet("icmp,nw_src=198.51.100.9,nw_dst=10.0.0.5,icmp_type=0", "outside")
    assert run_ct(Conntrack(), stray_reply, CtRequest(zone=1)).state == TRK | INV


def test_zones_are_separate_tables() -> None:
    committed = commit(zone=1)
    assert run_ct(committed.conntrack, reply_of(SYN), CtRequest(zone=2)).state == TRK | INV


def test_commit_sets_and_a_later_commit_changes_the_mark() -> None:
    committed = commit(mark=0x10)
    assert committed.conntrack.connections[0].mark == 0x10
    lookup = run_ct(committed.conntrack, reply_of(SYN), CtRequest(zone=1))
    assert lookup.mark == 0x10
    remarked = run_ct(committed.conntrack, SYN, CtRequest(zone=1, commit=True, mark=0x20))
    assert remarked.conntrack.connections[0].mark == 0x20


def test_snat_keeps_the_source_port_and_reverses_replies() -> None:
    committed = commit(nat=SNAT_TO)
    assert committed.state == TRK | NEW | SNAT
    assert (committed.packet.nw_src, committed.packet.tp_src) == (ip("200.200.200.200"), 40000)
    answer = reply_of(committed.packet)
    back = run_ct(committed.conntrack, answer, CtRequest(zone=1, apply_nat=True))
    assert back.state == TRK | EST | RPL | DNAT
    assert (back.packet.nw_dst, back.packet.tp_dst) == (ip("10.0.0.5"), 40000)
    untranslated = run_ct(committed.conntrack, answer, CtRequest(zone=1))
    assert untranslated.packet.nw_dst == ip("200.200.200.200")


def test_snat_picks_another_port_when_the_reply_tuple_is_taken() -> None:
    first = commit(nat=SNAT_TO)
    other_host = SYN.replace(nw_src=ip("10.0.0.6"))
    second = run_ct(first.conntrack, other_host, CtRequest(zone=1, commit=True, nat=SNAT_TO))
    assert second.packet.tp_src == 1024
    assert len(second.conntrack.connections) == 2


def test_dnat_rewrites_destination_and_port() -> None:
    dnat = NatSpec("dst", ip("10.0.1.10"), ip("10.0.1.10"), 4, 80, 80)
    inbound = packet("tcp,nw_src=198.51.100.9,nw_dst=200.200.200.200,tp_dst=8080", "outside")
    committed = run_ct(Conntrack(), inbound, CtRequest(zone=1, commit=True, nat=dnat))
    assert (committed.packet.nw_dst, committed.packet.tp_dst, committed.state) == (ip("10.0.1.10"), 80,
                                                                                   TRK | NEW | DNAT)
    back = run_ct(committed.conntrack, reply_of(committed.packet), CtRequest(zone=1, apply_nat=True))
    assert (back.packet.nw_src, back.packet.tp_src, back.state & SNAT) == (ip("200.200.200.200"), 8080, SNAT)


def test_an_icmp_error_about_a_connection_is_related_and_translated() -> None:
    committed = commit(nat=SNAT_TO)
    error = icmp_error_for(committed.packet)
    assert error.inner is not None and error.inner.src == ip("200.200.200.200")
    result = run_ct(committed.conntrack, error, CtRequest(zone=1, apply_nat=True))
    assert result.state == TRK | REL | RPL | DNAT
    assert result.packet.nw_dst == ip("10.0.0.5")
    assert result.packet.inner is not None and result.packet.inner.src == ip("10.0.0.5")


def test_an_icmp_error_about_nothing_known_is_invalid() -> None:
    error = icmp_error_for(SYN)
    assert run_ct(Conntrack(), error, CtRequest(zone=1)).state == TRK | INV


def test_a_cached_connection_is_not_translated_twice() -> None:
    committed = commit(nat=SNAT_TO)
    later = SYN.replace(tcp_flags=0x10)
    tracked = run_ct(committed.conntrack, later, CtRequest(zone=1, apply_nat=True))
    assert isinstance(tracked.cache, CtCache)
    again = run_ct(tracked.conntrack, tracked.packet, CtRequest(zone=1, commit=True, mark=5), tracked.cache)
    assert again.packet == tracked.packet
    assert len(again.conntrack.connections) == 1 and again.conntrack.connections[0].mark == 5


def test_a_zone_limit_refuses_commits_beyond_it() -> None:
    limited = Conntrack().with_limit(1, 1)
    first = run_ct(limited, SYN, CtRequest(zone=1, commit=True))
    second = run_ct(first.conntrack, SYN.replace(nw_src=ip("10.0.0.6")), CtRequest(zone=1, commit=True))
    assert len(second.conntrack.connections) == 1


def test_non_ip_is_invalid_and_states_print_like_ovs() -> None:
    arp = packet("arp,arp_spa=10.0.0.5,arp_tpa=10.0.0.1")
    assert run_ct(Conntrack(), arp, CtRequest()).state == TRK | INV
    assert format_ct_state(TRK | EST | RPL) == "+trk+est+rpl"
    assert format_ct_state(0) == "-trk"


def test_before_any_answer_some_packets_stay_new_as_in_ovs_userspace() -> None:
    committed = commit()
    retransmitted = run_ct(committed.conntrack, SYN, CtRequest(zone=1))
    assert retransmitted.state == TRK | NEW and retransmitted.mark == 0
    udp = packet("udp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=53")
    second = run_ct(commit(udp, mark=3).conntrack, udp, CtRequest(zone=1))
    third = run_ct(second.conntrack, udp, CtRequest(zone=1))
    fourth = run_ct(third.conntrack, udp, CtRequest(zone=1))
    assert (second.state, second.mark, third.state, fourth.state) == (TRK | NEW, 3, TRK | NEW, TRK | NEW)
    answered = run_ct(fourth.conntrack, reply_of(udp), CtRequest(zone=1))
    assert run_ct(answered.conntrack, udp, CtRequest(zone=1)).state == TRK | EST
    ping = packet("icmp,nw_src=10.0.0.5,nw_dst=198.51.100.9")
    answered = run_ct(commit(ping).conntrack, reply_of(ping), CtRequest(zone=1))
    assert run_ct(commit(ping).conntrack, ping, CtRequest(zone=1)).state == TRK | NEW
    assert run_ct(answered.conntrack, ping, CtRequest(zone=1)).state == TRK | EST
