"""Conntrack under pressure: the zone limit, what a full zone refuses, and a SYN flood."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from ovsmgr.cli import main
from ovsmgr.lab.ovs import Lab, LabPort

from .reliability import capture, flow_counts, grew, vswitchd_rss_kib, zone_limits
from .switch import apply, compiled_text
from .traffic import PY, converse, server

pytestmark = pytest.mark.integration

PORTS = (LabPort("inside", 1, "10.0.0.10/24"), LabPort("outside", 2, "198.51.100.9/24"))
OUTSIDE = "198.51.100.9"
STATE_INVALID = "table=30,priority=400,ct_state=+inv+trk"


def policy(*rules: str, conntrack: str = "", nat: str = "", bridge: str = "br0", ports: str = "") -> str:
    return f"""
version: 1
switch:
  bridge: {bridge}
  datapath: netdev
  ports: {{{ports or "inside: {ofport: 1}, outside: {ofport: 2}"}}}
  links: [[inside, outside]]
zones:
  inside: {{ports: [inside]}}
  outside: {{ports: [outside]}}
firewall:
  default: drop
  rules:
{chr(10).join(rules)}
{nat}
{conntrack}
"""


INSIDE_OUT = "    - {name: inside-out, from: inside, action: allow}"
WEB_IN = "    - {name: web-in, from: outside, services: [tcp/80], action: allow}"


@contextlib.contextmanager
def sessions(lab: Lab, count: int, port: int = 9000) -> Iterator[list[subprocess.Popen[str]]]:
    """`count` TCP sessions from inside to an echo server outside, each held open."""
    echo = lab.popen("outside", [*PY, "echo", str(port), "--timeout", "60"], stdout=subprocess.PIPE, text=True)
    opened: list[subprocess.Popen[str]] = []
    try:
        assert echo.stdout and "listening" in echo.stdout.readline()
        for _ in range(count):
            client = lab.popen("inside", [*PY, "session", OUTSIDE, str(port), "--timeout", "1"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            opened.append(client)
            assert client.stdout and client.stdout.readline().strip() == "connected"
        yield opened
    finally:
        for proc in [*opened, echo]:
            proc.kill()
            proc.wait()


def say(session: subprocess.Popen[str], word: str) -> str:
    assert session.stdin and session.stdout
    session.stdin.write(word + "\n")
    session.stdin.flush()
    return session.stdout.readline().strip()


# --- a second bridge on the same datapath, in another conntrack zone ----------------------------------
@contextlib.contextmanager
def second_bridge(lab: Lab) -> Iterator[tuple[str, str]]:
    """br1 on the same ovs-vswitchd (hence the same userspace conntrack), with two hosts of its own,
    conntrack zone 2 and no limit. Yields the two hosts' namespaces."""
    hosts = [(f"{lab.name}-b1h{i}", f"b1p{i}", f"10.1.0.{10 * i}/24") for i in (1, 2)]
    try:
        for netns, sw_if, address in hosts:
            subprocess.run(["ip", "netns", "add", netns], check=True)
            for argv in (["ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", sw_if,
                          "netns", lab.switch_netns],
                         ["ip", "-n", netns, "addr", "add", address, "dev", "eth0"],
                         ["ip", "-n", netns, "link", "set", "eth0", "up"],
                         ["ip", "-n", netns, "link", "set", "lo", "up"],
                         ["ip", "netns", "exec", netns, "ethtool", "-K", "eth0", "tx", "off"],
                         ["ip", "-n", lab.switch_netns, "link", "set", sw_if, "up"],
                         ["ip", "netns", "exec", lab.switch_netns, "ethtool", "-K", sw_if, "tx", "off"]):
                subprocess.run(argv, check=True, capture_output=True)
        ports = "inside: {ofport: 1, interface: b1p1}, outside: {ofport: 2, interface: b1p2}"
        apply(lab, compiled_text(policy(INSIDE_OUT, bridge="br1", ports=ports, conntrack="conntrack: {zone: 2}")))
        yield hosts[0][0], hosts[1][0]
    finally:
        for netns, _, _ in hosts:
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], check=False)
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)


def udp_exchange(netns: str, address: str, port: int) -> bool:
    out = subprocess.run(["ip", "netns", "exec", netns, *PY, "connect", "udp", address, str(port), "--timeout", "2"],
                         capture_output=True, text=True, timeout=15)
    return bool(json.loads(out.stdout.strip().splitlines()[-1])["ok"])


def test_a_full_zone_refuses_connection_n_plus_1_and_only_in_its_zone(lab_factory):
    lab = lab_factory(PORTS)
    apply(lab, compiled_text(policy(INSIDE_OUT, conntrack="conntrack: {max_connections: 3}")))
    assert zone_limits(lab, 1) == (3, 0)
    with sessions(lab, 3) as open_sessions, second_bridge(lab) as (b1h1, b1h2):
        assert zone_limits(lab, 1) == (3, 3)
        before = flow_counts(lab)
        with server(lab, "outside", "tcp", 8080), capture(lab, "outside", "tcp dst port 8080") as arrived:
            refused = converse(lab, "inside", "tcp", OUTSIDE, 8080, timeout=2)
        assert not refused["ok"], "connection 4 must not be established"
        assert zone_limits(lab, 1) == (3, 3)
        # OVS 3.1 counts the refusal nowhere (no coverage counter for zone limits, nothing in
        # ct-stats-show). What it leaves behind: the SYN is not committed but passes (the policy
        # allows it), and the answer, a SYN+ACK for no connection, is invalid: STATE drops it there.
        assert any("Flags [S]" in line for line in arrived), arrived
        assert grew(before, flow_counts(lab)).get(STATE_INVALID, 0) >= 1
        assert all(say(s, "still") == "reply still" for s in open_sessions), "committed ones carry on"

        server_proc = subprocess.Popen(["ip", "netns", "exec", b1h2, *PY, "serve", "udp", "5353", "--timeout", "20"],
                                       stdout=subprocess.PIPE, text=True)
        try:
            assert server_proc.stdout and "listening" in server_proc.stdout.readline()
            assert all(udp_exchange(b1h1, "10.1.0.20", 5353) for _ in range(5)), "zone 2 is not limited"
        finally:
            server_proc.kill()
            server_proc.wait()
        assert zone_limits(lab, 2) == (0, 0) and zone_limits(lab, 1) == (3, 3)

        status = CliRunner().invoke(main, ["status", "br0", "--db", lab.db_endpoint, "-o", "json"])
        assert json.loads(status.output)["conntrack"] == {"zone": 1, "connections": 3, "limit": 3, "full": True}
        text = CliRunner().invoke(main, ["status", "br0", "--db", lab.db_endpoint]).output
        assert "conntrack zone 1: 3 of 3 connections: FULL, new connections are refused" in text

    apply(lab, compiled_text(policy(INSIDE_OUT)))  # the policy no longer limits the zone
    assert zone_limits(lab, 1)[0] == 0, "a limit the policy dropped must not stay behind"
    with server(lab, "outside", "tcp", 8080):
        assert converse(lab, "inside", "tcp", OUTSIDE, 8080)["ok"]


def test_a_full_zone_never_leaks_untranslated_snat_traffic(lab_factory):
    lab = lab_factory(PORTS)
    masquerade = "nat:\n  - {name: masq, type: snat, from: inside, to: outside, translate_to: 200.200.200.200}"
    apply(lab, compiled_text(policy(INSIDE_OUT, nat=masquerade, conntrack="conntrack: {max_connections: 2}")))
    with server(lab, "outside", "udp", 5353):
        for _ in range(2):
            assert converse(lab, "inside", "udp", OUTSIDE, 5353)["seen_as"] == "200.200.200.200"
        with capture(lab, "outside", "udp dst port 5353") as arrived:
            assert not converse(lab, "inside", "udp", OUTSIDE, 5353, timeout=1)["ok"]
    leaked = [line for line in arrived if "10.0.0.10." in line]
    assert not leaked, f"the inside address left the switch untranslated: {leaked}"


# --- SYN flood --------------------------------------------------------------------------------------
FLOOD_SECONDS = 4
LIMIT = 1000


def flood(lab: Lab, rate: list[str]) -> dict[str, float]:
    """A SYN flood of random sources at inside tcp/80 (allowed), from the outside host, for
    FLOOD_SECONDS; meanwhile inside pings outside every 10 ms over an established ICMP connection.
    Returns the ping loss, hping3's packet count, the zone's count and ovs-vswitchd's RSS growth.
    The ping sends a count and waits for every reply (-W), not a deadline (-w): a deadline counts
    the replies still on their way when it passes as lost, many of them on a loaded machine."""
    rss = vswitchd_rss_kib(lab)
    pinger = lab.popen("inside", ["ping", "-n", "-q", "-i", "0.01", "-c", str((FLOOD_SECONDS + 1) * 100),
                                  "-W", "2", OUTSIDE], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    hping = lab.exec("outside", ["timeout", str(FLOOD_SECONDS), "hping3", "--rand-source", "-S", "-p", "80",
                                 *rate, "10.0.0.10"], capture_output=True, text=True, timeout=FLOOD_SECONDS + 10)
    out, _ = pinger.communicate(timeout=FLOOD_SECONDS + 30)
    loss = re.search(r"([\d.]+)% packet loss", out)
    sent = re.search(r"(\d+) packets transmitted", hping.stdout + hping.stderr)
    assert loss and sent, (out, hping.stdout, hping.stderr)
    return {"ping_loss_percent": float(loss[1]), "syns": int(sent[1]), "zone_count": zone_limits(lab, 1)[1],
            "rss_growth_kib": vswitchd_rss_kib(lab) - rss}


@pytest.mark.parametrize(("rate", "max_loss"), [
    (["-i", "u100"], 5.0),  # paced, at most 10,000 SYN/s: within what this datapath forwards
    (["--flood"], 99.0),  # as fast as hping3 can: more than this 2-core machine's datapath takes
], ids=["paced", "full-speed"])
def test_syn_flood_established_traffic_passes_and_memory_stays_bounded(lab_factory, rate, max_loss):
    """Established traffic keeps passing, the zone stays at its limit, ovs-vswitchd's memory does not
    grow with the flood. The price of the limit: once the flood fills the zone, new connections
    (from anywhere) are refused until its half-open entries expire."""
    lab = lab_factory(PORTS)
    apply(lab, compiled_text(policy(INSIDE_OUT, WEB_IN, conntrack=f"conntrack: {{max_connections: {LIMIT}}}")))
    with sessions(lab, 1) as (session,):
        assert say(session, "before") == "reply before"
        result = flood(lab, rate)
        print(f"\nSYN flood {' '.join(rate)}: {result}", file=sys.stderr)
        assert result["zone_count"] == LIMIT, "the flood fills the zone, and no more"
        assert result["ping_loss_percent"] <= max_loss, result
        assert result["rss_growth_kib"] < 16 * 1024, result
        assert say(session, "after").startswith("reply"), "the established session survives"
        with server(lab, "outside", "tcp", 8080):
            assert not converse(lab, "inside", "tcp", OUTSIDE, 8080, timeout=1)["ok"], "the zone is full"
