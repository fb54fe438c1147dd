"""Invalid and tricky packets from outside: what OVS 3.1's userspace conntrack makes of each, and
that none the policy does not allow ever reaches the inside host (checked there, with tcpdump).

The policy allows everything from inside and only tcp/80 from outside. Each case is sent
by hand from the outside host; the test asserts what arrived at the inside host and which
flow counted the packet: STATE's `+inv` drop, or FILTER's default drop after conntrack
took the packet for a new connection.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ovsmgr.lab.ovs import Lab, LabPort

from .reliability import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    capture,
    coverage,
    ethernet,
    flow_counts,
    fragments,
    grew,
    host,
    icmp,
    ipv4,
    send_frames,
    tcp,
    udp,
)
from .switch import apply, compiled_text
from .traffic import PY

pytestmark = pytest.mark.integration

PORTS = (LabPort("inside", 1, "10.0.0.10/24"), LabPort("outside", 2, "198.51.100.9/24"))
IN, OUT = "10.0.0.10", "198.51.100.9"
POLICY = """
version: 1
switch:
  bridge: br0
  datapath: netdev
  ports: {inside: {ofport: 1}, outside: {ofport: 2}}
  links: [[inside, outside]]
zones:
  inside: {ports: [inside]}
  outside: {ports: [outside]}
firewall:
  default: drop
  rules:
    - {name: inside-out, from: inside, action: allow}
    - {name: web-in, from: outside, services: [tcp/80], action: allow}
"""
INVALID = "table=30,priority=400,ct_state=+inv+trk"
FROM_OUTSIDE = f"ip and src host {OUT}"


@dataclass(frozen=True)
class Case:
    name: str
    packet: Callable[[], bytes]
    counted_by: str | None
    """The flow that must drop it; None: any drop flow of STATE or FILTER (the pipeline's choice)."""
    arrives: bool | None = False
    """None: either is safe (the policy allows the port)."""


CASES = [
    Case("unsolicited SYN+ACK", lambda: ipv4(OUT, IN, 6, tcp(OUT, IN, 80, 33333, SYN | ACK, 5, 77)), INVALID),
    Case("SYN+FIN to the allowed port", lambda: ipv4(OUT, IN, 6, tcp(OUT, IN, 44444, 80, SYN | FIN)), INVALID),
    Case("no flags (null scan)", lambda: ipv4(OUT, IN, 6, tcp(OUT, IN, 44445, 80, 0)), INVALID),
    Case("FIN+PSH+URG (xmas scan)", lambda: ipv4(OUT, IN, 6, tcp(OUT, IN, 44446, 80, FIN | PSH | URG)), INVALID),
    # Userspace conntrack picks up mid-stream TCP: a bare ACK or RST with no connection is +new,
    # not +inv; the pipeline drops it in STATE (new TCP without SYN) or at FILTER's default.
    Case("bare ACK, no connection, port not allowed",
         lambda: ipv4(OUT, IN, 6, tcp(OUT, IN, 44447, 33333, ACK, 5, 77)), None),
    Case("bare RST, no connection, port not allowed",
         lambda: ipv4(OUT, IN, 6, tcp(OUT, IN, 44448, 33333, RST, 5)), None),
    Case("bare ACK, no connection, to the allowed port",
         lambda: ipv4(OUT, IN, 6, tcp(OUT, IN, 44449, 80, ACK, 5, 77)), None, arrives=None),
    Case("ICMP port unreachable about a UDP flow that does not exist",
         lambda: ipv4(OUT, IN, 1, icmp(3, 3, ipv4(IN, OUT, 17, udp(IN, OUT, 5555, 53, b"x" * 8))[:28])), INVALID),
    Case("ICMP host unreachable about a TCP connection that does not exist",
         lambda: ipv4(OUT, IN, 1, icmp(3, 1, ipv4(IN, OUT, 6, tcp(IN, OUT, 5556, 80, SYN))[:28])), INVALID),
    Case("echo reply nobody asked for", lambda: ipv4(OUT, IN, 1, icmp(0, 0, b"\0\1\0\1" + b"x" * 8)), INVALID),
]


def _frame(lab: Lab, packet: bytes) -> bytes:
    return ethernet(host(lab, "inside")["mac"], host(lab, "outside")["mac"], packet)


def _drop_flows(lab: Lab) -> set[str]:
    """Keys (as `flow_counts` writes them) of STATE's and FILTER's flows that drop."""
    keys = set()
    for line in lab.ofctl(["dump-flows"]).splitlines():
        found = re.search(r"table=(30|40), .*?(priority=\S+) actions=drop$", line)
        if found:
            keys.add(f"table={found[1]},{found[2]}")
    return keys


def test_invalid_and_unsolicited_packets_never_reach_the_inside(lab_factory):
    lab = lab_factory(PORTS)
    apply(lab, compiled_text(POLICY))
    drops, wrong = _drop_flows(lab), []
    for case in CASES:
        before = flow_counts(lab)
        with capture(lab, "inside", FROM_OUTSIDE) as arrived:
            send_frames(lab, "outside", [_frame(lab, case.packet())])
        counted = grew(before, flow_counts(lab))
        dropped_by = [key for key in counted if key in drops]
        expected = [case.counted_by] if case.counted_by else dropped_by[:1]
        ok_arrival = case.arrives is None or bool(arrived) == case.arrives
        if not ok_arrival or (not arrived and (dropped_by != expected or counted[expected[0]] != 1)):
            wrong.append(f"{case.name}: arrived {arrived}, counted {counted}")
        print(f"{case.name}: {'arrived' if arrived else 'dropped by ' + ', '.join(dropped_by)}")
    assert not wrong, "\n".join(wrong)


def _ipf(lab: Lab) -> dict[str, int]:
    status = lab.appctl(["dpctl/ipf-get-status"])
    return {m[1]: int(m[2]) for m in re.finditer(r"v4 frags (\w[\w ]*?): (\d+)", status)}


def test_bad_fragments_never_reach_the_inside(lab_factory):
    """OVS 3.1 reassembles IPv4 fragments for conntrack (ipf, on by default) and sends the
    original fragments on. Overlaps and fragments under 1200 bytes are refused and counted by
    ipf; fragments of a connection to a port-specific rule do not match it (the flow table sees
    port 0 in fragments) and end at FILTER's default."""
    lab = lab_factory(PORTS)
    apply(lab, compiled_text(POLICY))
    syn = tcp(OUT, IN, 44450, 80, SYN, payload=b"A" * 2000)
    header_for_another_port = tcp(OUT, IN, 44450, 33333, SYN, payload=b"A" * 2000)
    cases = {
        "overlapping": (fragments(OUT, IN, 6, syn, [(0, 1480), (1200, 820)], 11), "overlapped"),
        "too small": (fragments(OUT, IN, 6, tcp(OUT, IN, 44451, 80, SYN, payload=b"B" * 100),
                                [(0, 24), (24, 96)], 12), "too small"),
        "overlap rewriting the TCP header": (
            [*fragments(OUT, IN, 6, syn, [(0, 1480)], 13),
             *fragments(OUT, IN, 6, header_for_another_port, [(0, 1480), (1480, 540)], 13)], "overlapped"),
        "out of order, to the allowed port": (fragments(OUT, IN, 6, syn, [(1480, 540), (0, 1480)], 14), "completed"),
        "a first fragment alone": (fragments(OUT, IN, 6, syn, [(0, 1480)], 15), "accepted"),
    }
    wrong = []
    for name, (frames, ipf_counter) in cases.items():
        before = _ipf(lab)
        with capture(lab, "inside", FROM_OUTSIDE) as arrived:
            send_frames(lab, "outside", [_frame(lab, f) for f in frames])
        after = _ipf(lab)
        if arrived or after[ipf_counter] <= before[ipf_counter]:
            wrong.append(f"{name}: arrived {arrived}, ipf {before} -> {after}")
    assert not wrong, "\n".join(wrong)
    # Fragments as such are not refused: a 3,000-byte datagram the policy allows arrives in pieces.
    with capture(lab, "outside", f"ip and src host {IN}") as arrived:
        lab.exec("inside", ["python3", "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                            f".sendto(b'x' * 3000, ('{OUT}', 7777))"], check=True)
    assert len([line for line in arrived if "7777" in line or "ip-proto-17" in line]) == 3, arrived


def test_an_ack_out_of_the_window_is_invalid_and_the_session_carries_on(lab_factory):
    lab = lab_factory(PORTS)
    apply(lab, compiled_text(POLICY))
    echo = lab.popen("outside", [*PY, "echo", "9000", "--timeout", "30"], stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert echo.stdout and "listening" in echo.stdout.readline()
        with capture(lab, "inside", "tcp src port 9000 and tcp[tcpflags] & tcp-syn != 0") as handshake:
            client = lab.popen("inside", [*PY, "session", OUT, "9000", "--timeout", "1"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert client.stdout and client.stdout.readline().strip() == "connected"
        found = re.search(r"> 10\.0\.0\.10\.(\d+): Flags \[S\.\], seq (\d+), ack (\d+)", handshake[0])
        assert found, handshake
        sport, server_seq, client_seq = int(found[1]), int(found[2]) + 1, int(found[3])

        def talk(word: str) -> str:
            assert client and client.stdin and client.stdout
            client.stdin.write(word + "\n")
            client.stdin.flush()
            return client.stdout.readline().strip()

        assert talk("one") == "reply one"  # 4 bytes each way
        server_seq, client_seq = server_seq + 4, client_seq + 4
        before, checks = flow_counts(lab), coverage(lab)
        forged = ipv4(OUT, IN, 6, tcp(OUT, IN, 9000, sport, ACK | PSH, server_seq + 2**31, client_seq, b"evil\n"))
        with capture(lab, "inside", f"tcp port {sport}") as arrived:
            send_frames(lab, "outside", [_frame(lab, forged)])
        assert not arrived, arrived
        assert grew(before, flow_counts(lab)).get(INVALID) == 1
        assert talk("two") == "reply two", "the real session is untouched"
        # Control: the same packet with the right sequence number is let through.
        server_seq, client_seq = server_seq + 4, client_seq + 4
        with capture(lab, "inside", f"tcp port {sport}") as arrived:
            send_frames(lab, "outside", [_frame(lab, ipv4(OUT, IN, 6, tcp(OUT, IN, 9000, sport, ACK, server_seq,
                                                                          client_seq)))])
        assert len(arrived) == 1, arrived
        assert coverage(lab)["conntrack_tcp_seq_chk_failed"] > checks["conntrack_tcp_seq_chk_failed"]
    finally:
        for proc in (client, echo):
            if proc is not None:
                proc.kill()
                proc.wait()
