"""Compiled policies in the simulator: pipeline behaviours the scenario tables do not show."""

from __future__ import annotations

from pathlib import Path

from ovsmgr.policy import load_policy_text
from ovsmgr.sim import Conversation, SimulatedSwitch

POLICIES = Path(__file__).resolve().parents[2] / "policies"
OUT = "tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443"
STRAY = "tcp,nw_src=198.51.100.9,nw_dst=10.0.0.5,tp_src=443,tp_dst=40000,tcp_flags=syn|ack"
"""A SYN+ACK for no connection: +inv (a lone ACK would be +new: OVS picks connections up mid-stream)."""


def _conversation(name: str, *edits: tuple[str, str]) -> Conversation:
    text = (POLICIES / name).read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return Conversation(SimulatedSwitch.from_policy(load_policy_text(text)))


def test_invalid_allow_lets_strays_through() -> None:
    lenient = _conversation("seed-firewall.yaml", ("firewall:", "conntrack:\n  invalid: allow\nfirewall:"))
    trace = lenient.send("outside", STRAY)
    assert (trace.verdict, trace.rule, trace.output) == ("allow", None, ("inside",))


def test_a_logged_rule_reports_to_the_controller_and_still_decides() -> None:
    trace = _conversation("gateway.yaml").send("wan0", "tcp,nw_src=198.51.100.66,nw_dst=200.200.200.200,tp_dst=80")
    assert (trace.verdict, trace.rule) == ("drop", "drop-blocklist")
    assert any("packet-in LOG (rule drop-blocklist)" in e for s in trace.steps for e in s.events)


def test_ipv6_neighbour_discovery_is_always_switched() -> None:
    solicitation = "icmp6,ipv6_src=fe80::5,ipv6_dst=ff02::2,icmp_type=133,dl_dst=33:33:00:00:00:02"
    trace = _conversation("gateway.yaml").send("lan0", solicitation)
    assert (trace.verdict, sorted(trace.output)) == ("allow", ["dmz0", "wan0"])


STATELESS_NTP = """    - name: ntp-out
      from: inside
      services: [udp/123]
      action: allow
      stateful: false
"""
STATELESS_BACK = """    - name: ntp-back
      from: outside
      src: 198.51.100.0/24
      action: allow
      stateful: false
"""


def test_stateless_rules_pass_each_direction_on_its_own_rule() -> None:
    rules = ("  rules:\n", "  rules:\n" + STATELESS_NTP + STATELESS_BACK)
    conversation = _conversation("seed-firewall.yaml", rules)
    out = conversation.send("inside", "udp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_src=123,tp_dst=123")
    assert (out.verdict, out.rule, out.conntrack.connections) == ("allow", "ntp-out", ())
    back = conversation.reply()
    assert (back.verdict, back.rule) == ("allow", "ntp-back")
    without_back = _conversation("seed-firewall.yaml", ("  rules:\n", "  rules:\n" + STATELESS_NTP))
    without_back.send("inside", "udp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_src=123,tp_dst=123")
    assert without_back.reply().verdict == "drop"


def test_a_stateless_tcp_handshake_needs_invalid_allow() -> None:
    """Every IP packet goes through conntrack: an uncommitted SYN+ACK is +inv and `invalid: drop` drops it."""
    tcp_rules = STATELESS_NTP.replace("udp/123", "tcp/443") + STATELESS_BACK
    strict = _conversation("seed-firewall.yaml", ("  rules:\n", "  rules:\n" + tcp_rules))
    assert strict.send("inside", OUT).verdict == "allow"
    assert strict.reply().verdict == "drop"
    lenient = _conversation("seed-firewall.yaml", ("  rules:\n", "  rules:\n" + tcp_rules),
                            ("firewall:", "conntrack:\n  invalid: allow\nfirewall:"))
    lenient.send("inside", OUT)
    assert lenient.reply().verdict == "allow"


def test_a_port_in_no_zone_sends_nothing_through() -> None:
    """The front end warns: 'port "rogue" is in no zone: everything it sends is dropped'."""
    rogue = _conversation("seed-firewall.yaml", ("    outside: {ofport: 2}\n", "    outside: {ofport: 2}\n    rogue: {ofport: 9}\n"))
    assert rogue.send("rogue", "tcp,nw_src=10.0.0.66,nw_dst=198.51.100.9,tp_dst=443").verdict == "drop"
    arp = rogue.send("rogue", "arp,arp_op=1,arp_spa=10.0.0.5,arp_tpa=198.51.100.9")
    assert (arp.verdict, arp.learned) == ("drop", ())
