"""Fragments on the userspace datapath: allowed traffic passes in fragments, denied stays denied.

OVS's userspace conntrack reassembles a datagram to track it and then forwards its
original fragments; only the first has ports. FILTER judges services by the
connection's original-direction tuple from conntrack (`ct_nw_proto`, `ct_tp_*`),
which every fragment carries, so all of a datagram's fragments take one way. The
hosts send datagrams larger than the 1,500-byte MTU: the sender's kernel fragments
them (ping -s 1600, 3,000-byte UDP), IPv4 and IPv6.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ovsmgr.lab.ovs import Lab
from ovsmgr.lab.spec import LabPort
from ovsmgr.policy import load_policy_text
from ovsmgr.sim.fragments import run_datagram
from ovsmgr.sim.session import SimulatedSwitch
from tests.integration.conftest import LabFactory
from tests.integration.switch import apply, compiled_text
from tests.support.policies import two_ports

pytestmark = pytest.mark.integration

FRAGPROBE = [sys.executable, "-I", "-S", str(Path(__file__).parents[1] / "kernel" / "fragprobe.py")]
PORTS = (LabPort("lan0", 1, "10.0.0.10/24"), LabPort("wan0", 2, "192.168.1.10/24"))
V6 = {"lan0": "fd00:1::10", "wan0": "fd00:2::10"}
LAN, WAN = "10.0.0.10", "192.168.1.10"
POLICY = two_ports("""firewall:
  default: drop
  rules:
    - {name: lan-out, from: lan0, services: [icmp/echo-request, icmpv6/echo-request, udp/7000], action: allow}
""", ports=("lan0", "wan0"))


def _ipv6(lab: Lab) -> None:
    for port, address in V6.items():
        lab.exec(port, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"], check=True)
        lab.exec(port, ["ip", "-6", "addr", "add", f"{address}/64", "dev", "eth0", "nodad"], check=True)
        lab.exec(port, ["ip", "-6", "route", "add", "default", "dev", "eth0"], check=True)


def _ping(lab: Lab, port: str, address: str, size: int = 1600) -> bool:
    argv = ["ping", "-n", "-q", "-c", "2", "-i", "0.3", "-w", "3", "-s", str(size), address]
    return lab.exec(port, argv, capture_output=True, timeout=10).returncode == 0


def _udp(lab: Lab, port: str, address: str, dport: int, size: int = 3000) -> dict[str, object]:
    argv = [*FRAGPROBE, "send", address, str(dport), "--size", str(size), "--timeout", "2"]
    out = lab.exec(port, argv, capture_output=True, text=True, timeout=15)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@contextmanager
def _udp_server(lab: Lab, port: str, *dports: int) -> Iterator[None]:
    proc = lab.popen(port, [*FRAGPROBE, "serve", *map(str, dports), "--timeout", "60"],
                     stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        yield
    finally:
        proc.kill()
        proc.wait()


CASES = [  # (host, what it sends, the simulator's packet for the datagram, passes)
    ("lan0", ("ping", WAN), f"icmp,nw_src={LAN},nw_dst={WAN}", True),
    ("lan0", ("ping", V6["wan0"]), f"icmp6,ipv6_src={V6['lan0']},ipv6_dst={V6['wan0']}", True),
    ("lan0", ("udp", WAN, 7000), f"udp,nw_src={LAN},nw_dst={WAN},tp_dst=7000", True),
    ("lan0", ("udp", V6["wan0"], 7000), f"udp6,ipv6_src={V6['lan0']},ipv6_dst={V6['wan0']},tp_dst=7000", True),
    ("lan0", ("udp", WAN, 7001), f"udp,nw_src={LAN},nw_dst={WAN},tp_dst=7001", False),
    ("lan0", ("udp", V6["wan0"], 7001), f"udp6,ipv6_src={V6['lan0']},ipv6_dst={V6['wan0']},tp_dst=7001", False),
    ("wan0", ("udp", LAN, 7000), f"udp,nw_src={WAN},nw_dst={LAN},tp_dst=7000", False),
    ("wan0", ("ping", LAN), f"icmp,nw_src={WAN},nw_dst={LAN}", False),
    ("wan0", ("ping", V6["lan0"]), f"icmp6,ipv6_src={V6['wan0']},ipv6_dst={V6['lan0']}", False),
]


def test_allowed_datagrams_pass_in_fragments_and_denied_ones_do_not(lab_factory: LabFactory) -> None:
    """1,600-byte pings and 3,000-byte UDP datagrams, IPv4 and IPv6, allowed by rules with services
    pass whole; to another port or the other way, none of them does; the simulator says the same."""
    lab = lab_factory(PORTS)
    _ipv6(lab)
    apply(lab, compiled_text(POLICY))
    switch = SimulatedSwitch.from_policy(load_policy_text(POLICY))
    seen = {}
    with _udp_server(lab, "wan0", 7000, 7001), _udp_server(lab, "lan0", 7000):
        for host, (kind, address, *port), spec, _ in CASES:
            if kind == "ping":
                ok = _ping(lab, host, address)
            else:
                sent = _udp(lab, host, address, port[0])
                ok = bool(sent["ok"]) and sent["len"] == 3000
            simulated = run_datagram(switch, switch.packet(host, spec), switch.initial_state()).verdict
            seen[spec] = (ok, simulated)
    assert seen == {spec: (passes, "allow" if passes else "drop") for _, _, spec, passes in CASES}
