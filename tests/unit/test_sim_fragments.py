"""Fragmented datagrams in the simulator: one verdict per datagram, as OVS's userspace conntrack."""

from __future__ import annotations

import pytest

from ovsmgr.compiler import compile_policy
from ovsmgr.policy import load_policy_text
from ovsmgr.sim.fields import FRAG_ANY, FRAG_LATER
from ovsmgr.sim.fragments import run_datagram
from ovsmgr.sim.session import SimulatedSwitch
from tests.support.policies import two_ports

POLICY = two_ports("""firewall:
  default: drop
  rules:
    - {name: lan-out, from: lan0, services: [icmp/echo-request, icmpv6/echo-request, udp/7000], action: allow}
""", ports=("lan0", "wan0"))


@pytest.fixture(scope="module")
def switch() -> SimulatedSwitch:
    return SimulatedSwitch.from_policy(load_policy_text(POLICY))


@pytest.mark.parametrize(("port", "spec", "verdict"), [
    ("lan0", "udp,nw_src=10.0.0.10,nw_dst=192.168.1.10,tp_dst=7000", "allow"),
    ("lan0", "udp6,ipv6_src=fd00:1::10,ipv6_dst=fd00:2::10,tp_dst=7000", "allow"),
    ("lan0", "icmp,nw_src=10.0.0.10,nw_dst=192.168.1.10", "allow"),
    ("lan0", "icmp6,ipv6_src=fd00:1::10,ipv6_dst=fd00:2::10", "allow"),
    ("lan0", "udp,nw_src=10.0.0.10,nw_dst=192.168.1.10,tp_dst=7001", "drop"),
    ("wan0", "udp,nw_src=192.168.1.10,nw_dst=10.0.0.10,tp_dst=7000", "drop"),
    ("wan0", "icmp,nw_src=192.168.1.10,nw_dst=10.0.0.10", "drop"),
])
def test_a_datagram_passes_whole_or_not_at_all(switch: SimulatedSwitch, port: str, spec: str, verdict: str) -> None:
    outcome = run_datagram(switch, switch.packet(port, spec), switch.initial_state())
    assert outcome.verdict == verdict, outcome.why


def test_later_fragments_show_no_ports_and_follow_by_protocol(switch: SimulatedSwitch) -> None:
    packet = switch.packet("lan0", "udp,nw_src=10.0.0.10,nw_dst=192.168.1.10,tp_dst=7000")
    later = switch.run(packet.replace(nw_frag=FRAG_ANY | FRAG_LATER), switch.initial_state())
    filter_step = next(s for s in later.steps if s.table == 40)
    assert filter_step.match is not None and filter_step.match.get("nw_frag") is not None  # a follower flow
    assert filter_step.metadata is not None and filter_step.metadata["ct_nw_proto"] == 17


def test_a_denied_datagrams_later_fragments_alone_commit_nothing(switch: SimulatedSwitch) -> None:
    packet = switch.packet("lan0", "udp,nw_src=10.0.0.10,nw_dst=192.168.1.10,tp_dst=7001")
    outcome = run_datagram(switch, packet, switch.initial_state())
    assert outcome.later.verdict == "allow"  # a follower: alone, OVS holds it at the commit's ct()
    assert outcome.verdict == "drop" and outcome.state.conntrack.connections == ()


def test_a_rule_without_services_passes_fragments_as_they_are() -> None:
    seed = SimulatedSwitch.from_policy(load_policy_text(two_ports(
        "firewall:\n  rules:\n    - {name: out, from: inside, action: allow}\n")))
    packet = seed.packet("inside", "udp,nw_src=10.0.0.10,nw_dst=198.51.100.9,tp_dst=9")
    assert run_datagram(seed, packet, seed.initial_state()).verdict == "allow"


def test_the_compiled_flows_match_services_on_the_conntrack_tuple() -> None:
    flows = compile_policy(load_policy_text(POLICY)).flows
    services = [f for f in flows if f.table == 40 and f.match.get("ct_nw_proto") is not None]
    assert services and all(f.match.get("nw_proto") is None and f.match.get("tp_dst") is None for f in services)
    assert all(f.match.get("ct_state") is not None for f in services)
