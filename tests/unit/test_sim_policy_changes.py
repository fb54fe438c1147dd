"""Conversations across a policy change: connections carry on, are revalidated, or are cut.

The switch keeps its conntrack state when a new policy is applied; with
`cut_on_rule_removal` a connection whose ct_mark names a rule the new policy no
longer has (a rule removed, renamed or changed) is revalidated against the new
rules by its next original-direction packet, and cut if they deny it.
"""

from __future__ import annotations

from pathlib import Path

from ovsmgr.policy import load_policy_text
from ovsmgr.sim import Conversation, SimulatedSwitch

POLICIES = Path(__file__).resolve().parents[2] / "policies"
GATEWAY_HOSTS: dict[str, tuple[str, ...]] = {"lan0": ("10.0.0.5/24",), "dmz0": ("10.0.1.10/24",), "wan0": ("198.51.100.9/24",)}


def _switch(name: str, *edits: tuple[str, str], hosts: dict[str, tuple[str, ...]] | None = None) -> SimulatedSwitch:
    text = (POLICIES / name).read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return SimulatedSwitch.from_policy(load_policy_text(text), hosts)


def _established(switch: SimulatedSwitch, port: str, spec: str) -> Conversation:
    conversation = Conversation(switch)
    conversation.announce_hosts()
    assert conversation.send(port, spec).verdict == "allow"
    assert conversation.reply().verdict == "allow"
    return conversation


def _after_change(before: Conversation, switch: SimulatedSwitch) -> Conversation:
    after = Conversation(switch, state=before.state)
    after.announce_hosts()
    return after


SEED_OUT = "tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443"
SEED_DATA = SEED_OUT + ",tcp_flags=ack"
SEED_BACK = "tcp,nw_src=198.51.100.9,nw_dst=200.200.200.200,tp_src=443,tp_dst=40000,tcp_flags=ack"


def test_an_unchanged_rule_keeps_its_connections() -> None:
    before = _established(_switch("seed-firewall.yaml"), "inside", SEED_OUT)
    after = _after_change(before, _switch("seed-firewall.yaml", ("# The stateful", "# Edited: the stateful")))
    trace = after.send("outside", SEED_BACK.replace("200.200.200.200", "10.0.0.5"))
    assert (trace.verdict, trace.rule) == ("allow", "inside-out")


def test_a_renamed_rule_revalidates_on_the_next_packet_out() -> None:
    before = _established(_switch("seed-nat.yaml"), "inside", SEED_OUT)
    after = _after_change(before, _switch("seed-nat.yaml", ("name: inside-out", "name: inside-out-v2")))
    assert after.send("outside", SEED_BACK).verdict == "drop", "replies wait for revalidation"
    out = after.send("inside", SEED_DATA)
    assert (out.verdict, out.rule, out.packet.nw_src) == ("allow", "inside-out-v2", 0xC8C8C8C8)
    back = after.send("outside", SEED_BACK)
    assert (back.verdict, back.rule, back.output) == ("allow", "inside-out-v2", ("inside",))


def test_a_rule_that_now_drops_cuts_its_connections() -> None:
    before = _established(_switch("seed-nat.yaml"), "inside", SEED_OUT)
    after = _after_change(before, _switch("seed-nat.yaml", ("      action: allow", "      action: drop")))
    assert after.send("inside", SEED_DATA).verdict == "drop"
    assert after.send("outside", SEED_BACK).verdict == "drop"


def test_a_port_forward_survives_a_change_of_its_rule() -> None:
    gateway = _switch("gateway.yaml", hosts=GATEWAY_HOSTS)
    before = _established(gateway, "wan0", "tcp,nw_src=198.51.100.9,nw_dst=200.200.200.200,tp_dst=8080")
    renamed = _switch("gateway.yaml", ("name: web-published", "name: web-published-v2"), hosts=GATEWAY_HOSTS)
    after = _after_change(before, renamed)
    trace = after.send("wan0", "tcp,nw_src=198.51.100.9,nw_dst=200.200.200.200,tp_dst=8080,tcp_flags=ack")
    assert (trace.verdict, trace.rule, trace.output) == ("allow", "web-published-v2", ("dmz0",))


def test_a_masqueraded_connection_survives_a_change_of_a_rule_with_src() -> None:
    with_src = ("      to: wan\n      services: [web, dns", "      to: wan\n      src: \"@lan_hosts\"\n      services: [web, dns")
    before = _established(_switch("gateway.yaml", with_src, hosts=GATEWAY_HOSTS), "lan0", SEED_OUT)
    renamed = _switch("gateway.yaml", with_src, ("name: lan-out", "name: lan-out-v2"), hosts=GATEWAY_HOSTS)
    trace = _after_change(before, renamed).send("lan0", SEED_DATA)
    assert (trace.verdict, trace.rule, trace.output) == ("allow", "lan-out-v2", ("wan0",))
